package mesh_test

import (
	"context"
	"strings"
	"sync"
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
	call, m := getUserWithin(t, fake)
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

// TestDeadlineEstimateDoesNotLatch: the estimate behind the refusal above
// must not turn one bad moment into refusing a method for good (refused
// calls are not measured, so nothing would correct it). A method that
// takes ~5 ms meets, in turn: one call of 2 s (one sample moves the
// estimate by at most a few times itself: not refused after); 30 calls
// that outlive their 50 ms deadline (they measure their deadline, not the
// method: not observed); 30 calls stalled for a second that succeed — a
// replica paused and resumed — after which calls are refused, and served
// again within a second or so, when no completed call has confirmed the
// inflated estimate (the cluster chaos suite's replica that refused every
// call for the rest of the run).
func TestDeadlineEstimateDoesNotLatch(t *testing.T) {
	t.Parallel()
	var delay atomic.Int64
	var running atomic.Int32
	fake := &fakeUsers{getUser: func(ctx context.Context, _ *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		running.Add(1)
		defer running.Add(-1)
		time.Sleep(time.Duration(delay.Load())) // a stalled process does not look at its context either
		return okUser, nil
	}}
	call, _ := getUserWithin(t, fake)
	refused := func(err error) bool { return strings.Contains(status.Convert(err).Message(), "usually takes") }
	burst := func(n int, d time.Duration) {
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() { _ = call(d) })
		}
		wg.Wait()
		for running.Load() > 0 { // the handlers outlive calls that timed out
			time.Sleep(5 * time.Millisecond)
		}
	}
	delay.Store(int64(5 * time.Millisecond))
	for range 20 {
		if err := call(time.Second); err != nil {
			t.Fatal(err)
		}
	}

	delay.Store(int64(2 * time.Second))
	if err := call(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	delay.Store(int64(5 * time.Millisecond))
	if err := call(60 * time.Millisecond); err != nil {
		t.Fatalf("after one 2 s call, a 60 ms deadline for a 5 ms method: %v (one sample made the method look slow)", err)
	}

	delay.Store(int64(time.Second))
	burst(30, 50*time.Millisecond)
	delay.Store(int64(5 * time.Millisecond))
	if err := call(100 * time.Millisecond); err != nil {
		t.Fatalf("after 30 calls past their deadline: %v (calls cut short by their deadline were measured)", err)
	}

	delay.Store(int64(time.Second))
	burst(30, 5*time.Second)
	delay.Store(int64(5 * time.Millisecond))
	resumed := time.Now()
	err := call(100 * time.Millisecond)
	if !refused(err) {
		t.Fatalf("just after 30 calls of 1 s: %v, want refused on the estimate (else this test shows nothing)", err)
	}
	for refused(err) {
		if time.Since(resumed) > mesh.EstimateTTL+time.Second {
			t.Fatalf("still refused %v after the stall: the estimate latched (%v)", time.Since(resumed).Round(time.Millisecond), err)
		}
		time.Sleep(20 * time.Millisecond)
		err = call(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after the stall: %v", err)
	}
	t.Logf("refused for %v after the stall", time.Since(resumed).Round(time.Millisecond))
}

// getUserWithin serves fake on a real mesh server and returns a GetUser
// call with a deadline d away, and the server's metrics.
func getUserWithin(t *testing.T, fake *fakeUsers) (call func(d time.Duration) error, m *mesh.Metrics) {
	m, _ = testenv.Metrics()
	srv := mesh.NewServer(mesh.ServerConfig{}, testenv.Logger(), m)
	srv.Register(&userv1.UserService_ServiceDesc, fake, validate)
	c := userv1.NewUserServiceClient(testenv.Dial(t, testenv.Serve(t, srv)))
	return func(d time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		_, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: validID})
		return err
	}, m
}
