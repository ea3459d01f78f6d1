//go:build cpusignal

// The real CPU signal reads the whole machine's contention, so these tests
// run alone, never beside other packages' tests (make test runs them after
// the rest: go test -tags cpusignal -run CPUSignal ./mesh).

package mesh_test

import (
	"context"
	"math/rand/v2"
	"runtime"
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

// shedUnder runs 24 closed-loop callers per CPU of GetUser for 2.5 s
// against a shedding server (limit 4–8, a 1 ms queue, the real scheduler
// signal with target) whose handler is work, and returns how many calls were refused
// in the last 2 s (after the signal has had time to speak), how many were
// served and how many over-limit calls were admitted as not short of CPU.
// A refused caller waits its 50–150 ms retry delay, as clients do.
func shedUnder(t *testing.T, target float64, work func()) (refused, served int32, overLimit float64) {
	t.Helper()
	refused, served, overLimit, _ = shedUnderConfig(t, mesh.ShedConfig{RunQueue: target}, work)
	return refused, served, overLimit
}

// shedUnderConfig is shedUnder with the signal's settings in cfg
// (RunQueue, CPUShare, CPUMillis); it also returns the CPUs the process's
// share was measured against (trellis_process_cpus).
func shedUnderConfig(t *testing.T, cfg mesh.ShedConfig, work func()) (refused, served int32, overLimit, cpus float64) {
	t.Helper()
	fake := &fakeUsers{getUser: func(ctx context.Context, _ *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		work()
		return okUser, nil
	}}
	m, _ := testenv.Metrics()
	cfg.Enabled, cfg.MinLimit, cfg.MaxLimit, cfg.MaxWait, cfg.Pushback = true, 4, 8, time.Millisecond, 100*time.Millisecond
	srv := mesh.NewServer(mesh.ServerConfig{Name: "user", Shed: cfg}, testenv.Logger(), m)
	srv.Register(&userv1.UserService_ServiceDesc, fake, validate)
	c := userv1.NewUserServiceClient(testenv.Dial(t, testenv.Serve(t, srv)))
	start := time.Now()
	var ref, ok atomic.Int32
	var wg sync.WaitGroup
	for range 24 * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for time.Since(start) < 2500*time.Millisecond {
				_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID})
				switch status.Code(err) {
				case codes.OK:
					ok.Add(1)
				case codes.ResourceExhausted:
					if time.Since(start) > 500*time.Millisecond {
						ref.Add(1)
					}
					time.Sleep(100 * time.Millisecond)
				default:
					t.Errorf("call: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	return ref.Load(), ok.Load(), testutil.ToFloat64(m.OverLimit("user")), testutil.ToFloat64(m.CPUs())
}

// spin burns CPU for d.
func spin(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
	}
}

// TestCPUSignalSlowUpstreamIsNotOverload: handlers that wait ~200 ms (for an
// upstream, a database, the network) drive a latency-based limiter's limit
// down to its minimum, and the callers keep six times that many calls in
// flight. With the scheduler signal nothing is refused — the process has
// CPU to spare — and the calls over the limit are counted as such; with
// the signal off (target 0, latency alone) the same load is refused:
// the false refusals the signal exists to prevent. (Not parallel: other
// tests burning CPU beside it would make the process short of CPU. A
// machine busy with other processes can do that too, so a few refusals
// are tolerated — under 2 % of the calls; latency alone refuses most.)
func TestCPUSignalSlowUpstreamIsNotOverload(t *testing.T) {
	// 150–250 ms, as a slow network's jitter has it: callers in lockstep,
	// all woken by one timer, would be a burst of work of their own.
	slow := func() { time.Sleep(150*time.Millisecond + rand.N(100*time.Millisecond)) }
	refused, served, over := shedUnder(t, mesh.DefaultShedRunQueue, slow)
	t.Logf("scheduler signal: %d refused, %d served, %v admitted over the limit", refused, served, over)
	if refused*50 > served || over == 0 {
		t.Errorf("a slow upstream was taken for overload: %d refused for %d served (want none), %v admitted over the limit (want > 0)", refused, served, over)
	}
	refused, served, _ = shedUnder(t, 0, slow)
	t.Logf("latency alone: %d refused, %d served", refused, served)
	if refused*50 <= served {
		t.Errorf("the latency-only limiter refused nothing: this test cannot tell the signals apart")
	}
}

// TestCPUSignalOverloadIsShed: handlers that each burn 4 ms of CPU and
// wait 20 ms (a database), 24 callers per CPU: the process is short of
// CPU, the run queue says so, and calls over the limit are refused. (With
// handlers that only burn CPU, the backlog waits in the run queue before
// any call reaches admission, and the limit is never exceeded:
// docs/resilience.md, "Overload", what is left.)
func TestCPUSignalOverloadIsShed(t *testing.T) {
	refused, served, over := shedUnder(t, mesh.DefaultShedRunQueue, func() { spin(4 * time.Millisecond); time.Sleep(20 * time.Millisecond) })
	t.Logf("%d refused, %d served, %v admitted over the limit", refused, served, over)
	if refused == 0 || served == 0 {
		t.Errorf("CPU overload: %d refused, %d served; want both", refused, served)
	}
}
