package mesh_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
)

// TestHopelessDeadlinesAreRefusedAtOnce: once a method is known to take
// ~40 ms, a call with 5 ms left is refused before the handler runs (the
// handler would be thrown away), a call with enough time is served, and
// a method not yet known is never refused.
func TestHopelessDeadlinesAreRefusedAtOnce(t *testing.T) {
	t.Parallel()
	var handled atomic.Int32
	fake := &fakeUsers{getUser: func(ctx context.Context, _ *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		handled.Add(1)
		time.Sleep(100 * time.Millisecond)
		return okUser, nil
	}}
	m, _ := testenv.Metrics()
	srv := mesh.NewServer(mesh.ServerConfig{}, testenv.Logger(), m)
	srv.Register(&userv1.UserService_ServiceDesc, fake, validate)
	c := userv1.NewUserServiceClient(testenv.Dial(t, testenv.Serve(t, srv)))
	call := func(d time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		_, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: validID})
		return err
	}
	// Unknown method: even a short deadline is tried.
	if err := call(5 * time.Millisecond); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("first call: %v", err)
	}
	for range 20 {
		if err := call(time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// A 30 ms deadline for a method that takes 100 ms. On a loaded
	// machine the client's own timer can fire before the answer arrives
	// (then the message is the client's): a few attempts, one must be the
	// server's refusal.
	before := handled.Load()
	var err error
	for range 5 {
		if err = call(30 * time.Millisecond); strings.Contains(status.Convert(err).Message(), "usually takes") {
			break
		}
	}
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(status.Convert(err).Message(), "usually takes") {
		t.Fatalf("hopeless call: %v, want DEADLINE_EXCEEDED refused with the estimate", err)
	}
	if handled.Load() != before {
		t.Fatalf("the hopeless call reached the handler (%d → %d)", before, handled.Load())
	}
	if got := testutil.ToFloat64(m.Refused("/trellis.user.v1.UserService/GetUser", "deadline")); got < 1 {
		t.Fatalf("refused counter %v, want at least 1", got)
	}
	if err := call(time.Second); err != nil {
		t.Fatalf("a call with enough time: %v", err)
	}
}
