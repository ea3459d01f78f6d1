package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/app/apptest"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
)

// syncBuf is a buffer safe for one writer and a polling reader.
type syncBuf struct {
	mu chan struct{}
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.b.String()
}

func TestEventsTail(t *testing.T) {
	t.Parallel()
	cfg := apptest.Config(t, "user,order")
	running := apptest.Start(t, cfg)
	// The user deletes its own account: no other account, no other event.
	id, token := apptest.SignUp(t, running, "tail@example.com")
	users := userv1.NewUserServiceClient(running.DialAs(t, app.TargetUser, token))

	out := &syncBuf{mu: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- app.Tail(ctx, app.TailConfig{NATSURL: cfg.NATSURL, Subject: "trellis.user.v1.*", All: true, Identity: cfg.Identity}, out, io.Discard)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "trellis.user.v1.created") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// A live event after the replay.
	if _, err := users.DeleteUser(context.Background(), &userv1.DeleteUserRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(out.String(), "trellis.user.v1.deleted") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("tail printed %d lines, want created and deleted:\n%s", len(lines), out.String())
	}
	var first struct {
		Subject string         `json:"subject"`
		ID      string         `json:"id"`
		Type    string         `json:"type"`
		Data    map[string]any `json:"data"`
	}
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatalf("not a JSON line: %v\n%s", err, lines[0])
	}
	if first.Subject != "trellis.user.v1.created" || first.Type != "trellis.events.v1.UserCreated" || first.ID == "" ||
		first.Data["userId"] != id || first.Data["email"] != "tail@example.com" {
		t.Errorf("first line = %s", lines[0])
	}
}

func TestMatch(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		pattern, subject string
		want             bool
	}{
		{"trellis.>", "trellis.user.v1.created", true},
		{"trellis.user.v1.*", "trellis.user.v1.created", true},
		{"trellis.user.v1.*", "trellis.order.v1.created", false},
		{"trellis.user.v1.created", "trellis.user.v1.created", true},
		{"trellis.user.v1.created", "trellis.user.v1", false},
		{"trellis.*", "trellis.user.v1.created", false},
		{"trellis.user.>", "trellis.user", false},
	} {
		if got := eventbus.Match(tt.pattern, tt.subject); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.subject, got, tt.want)
		}
	}
}

// TestEventsTailSaysWhatIsNotThere: against a NATS without Trellis's
// streams (a wrong URL or prefix), tail says so instead of waiting
// silently.
func TestEventsTailSaysWhatIsNotThere(t *testing.T) {
	t.Parallel()
	url, _ := testenv.NATS(t)
	status := &syncBuf{mu: make(chan struct{}, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := app.Tail(ctx, app.TailConfig{NATSURL: url, Subject: "trellis.>", NATSPrefix: "nope.", Identity: apptest.Config(t, app.TargetUser).Identity}, io.Discard, status); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"no stream NOPE_TRELLIS_USER, NOPE_TRELLIS_ORDER", "following nope.trellis.>"} {
		if !strings.Contains(status.String(), want) {
			t.Errorf("status %q lacks %q", status.String(), want)
		}
	}
}
