package order

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/event"
	"github.com/trellis-mesh/trellis/internal/sqldb"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
)

// as is a context acting for the end user userID.
func as(userID string) context.Context {
	return mesh.WithPrincipal(context.Background(), &mesh.Principal{Subject: userID}, "")
}

// fakeUsers is the user service as the use case sees it (the Users seam):
// its answer is what the test says, and it counts the questions.
type fakeUsers struct {
	exists func(id string) error
	calls  int
}

func (f *fakeUsers) Exists(_ context.Context, id string) error {
	f.calls++
	return f.exists(id)
}

// TestCreateDecidesFromTheUserServiceAndTheReplica is the decision table of
// docs/consistency.md, run against the use case alone: a real SQLite store
// and a fake user service, no network.
func TestCreateDecidesFromTheUserServiceAndTheReplica(t *testing.T) {
	t.Parallel()
	const known, deleted, stranger = "0192f7a4-7c4e-7d1a-9b7e-000000000001", "0192f7a4-7c4e-7d1a-9b7e-000000000002", "0192f7a4-7c4e-7d1a-9b7e-000000000003"
	tests := []struct {
		name       string
		user       string
		answer     error // what the user service says
		wantCode   codes.Code
		wantStatus Status
		wantAsked  bool
	}{
		{"exists", stranger, nil, codes.OK, StatusConfirmed, true},
		{"not found", stranger, errUserNotFound, codes.NotFound, 0, true},
		{"unavailable, known to the replica", known, fmt.Errorf("%w: breaker open", errUserUnavailable), codes.OK, StatusPending, true},
		{"unavailable, unknown to the replica", stranger, fmt.Errorf("%w: breaker open", errUserUnavailable), codes.Unavailable, 0, true},
		{"deleted in the replica", deleted, nil, codes.NotFound, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store, err := NewSQLStore(context.Background(), testenv.OpenDB(t, sqldb.SQLite, "order"))
			if err != nil {
				t.Fatal(err)
			}
			noCancel := func(Order) (event.Event, error) { return event.Event{}, nil }
			base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
			for i, u := range []KnownUser{{ID: known, Version: base}, {ID: deleted, Deleted: true, Version: base}} {
				if _, err := store.ApplyUser(context.Background(), "c", fmt.Sprint("ev", i), u, noCancel); err != nil {
					t.Fatal(err)
				}
			}
			users := &fakeUsers{exists: func(string) error { return tt.answer }}
			svc := NewService(store, users, Config{})
			o, err := svc.Create(as(tt.user), CreateInput{UserID: tt.user, Currency: "EUR", IdempotencyKey: "k",
				Items: []Item{{ProductID: "p", Quantity: 2, UnitPrice: 150}}})
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("code %v (%v), want %v", got, err, tt.wantCode)
			}
			if err == nil && (o.Status != tt.wantStatus || o.Total != 300) {
				t.Errorf("order %v total %d, want %v total 300", o.Status, o.Total, tt.wantStatus)
			}
			if asked := users.calls > 0; asked != tt.wantAsked {
				t.Errorf("asked the user service: %v, want %v", asked, tt.wantAsked)
			}
		})
	}
}

// TestCreateIsIdempotentPerKey: the same key and payload return the first
// order without asking again; the same key with another payload is
// ALREADY_EXISTS.
func TestCreateIsIdempotentPerKey(t *testing.T) {
	t.Parallel()
	store, err := NewSQLStore(context.Background(), testenv.OpenDB(t, sqldb.SQLite, "order"))
	if err != nil {
		t.Fatal(err)
	}
	users := &fakeUsers{exists: func(string) error { return nil }}
	svc := NewService(store, users, Config{})
	in := CreateInput{UserID: "0192f7a4-7c4e-7d1a-9b7e-000000000009", Currency: "EUR", IdempotencyKey: "k",
		Items: []Item{{ProductID: "p", Quantity: 1, UnitPrice: 100}}}
	first, err := svc.Create(as(in.UserID), in)
	if err != nil {
		t.Fatal(err)
	}
	again, err := svc.Create(as(in.UserID), in)
	if err != nil || again.ID != first.ID || users.calls != 1 {
		t.Errorf("retry: order %s (first %s), err %v, user service asked %d times", again.ID, first.ID, err, users.calls)
	}
	in.Items[0].Quantity = 2
	if _, err := svc.Create(as(in.UserID), in); status.Code(err) != codes.AlreadyExists {
		t.Errorf("same key, other payload: %v, want AlreadyExists", err)
	}
}

// hungUsers is a user service that never answers (a stopped replica):
// GetUser returns only when its context ends.
type hungUsers struct{}

func (hungUsers) GetUser(ctx context.Context, _ *userv1.GetUserRequest, _ ...grpc.CallOption) (*userv1.GetUserResponse, error) {
	<-ctx.Done()
	return nil, status.FromContextError(ctx.Err()).Err()
}

// TestUserCheckLeavesTimeForTheCaller: with the user service hanging, the
// check gives up at half the caller's remaining deadline and says
// "unavailable" (so a known user's order is taken PENDING) instead of
// running the caller's deadline out.
func TestUserCheckLeavesTimeForTheCaller(t *testing.T) {
	t.Parallel()
	// 2 s, so that a busy CI machine's scheduling delay (tens of ms under
	// -race) cannot be mistaken for the check overrunning its half.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	err := NewUserClient(hungUsers{}).Exists(ctx, "0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90")
	if !errors.Is(err, errUserUnavailable) {
		t.Fatalf("Exists = %v; want errUserUnavailable", err)
	}
	if took := time.Since(start); took > 1500*time.Millisecond || ctx.Err() != nil {
		t.Errorf("the check took %v of the caller's 2s (caller's context: %v); want about half", took, ctx.Err())
	}
}
