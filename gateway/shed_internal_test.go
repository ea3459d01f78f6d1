package gateway

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
)

// TestShedDoesNotCountRefusalsBehindIt: the gateway's limiter, short of
// CPU with a 40 ms latency target, sees requests that the service behind
// it refuses (429 after 5 ms). Those are no completions of the gateway's
// work, so its cap stays at the minimum (4 in flight) as if nothing
// completed; the same requests answered 200 are completions, and the
// adaptive limit (8) holds them. Counted, the fast refusals would raise
// the cap, and the gateway would pass more requests on to be refused.
func TestShedDoesNotCountRefusalsBehindIt(t *testing.T) {
	t.Parallel()
	peak := func(code int) int32 {
		m, _ := testenv.Metrics()
		l := mesh.NewLimiter(mesh.ShedConfig{Enabled: true, MinLimit: 4, MaxLimit: 100, Pushback: time.Second, RunQueue: 1,
			LatencyTarget: 40 * time.Millisecond, Saturated: func() bool { return true }}, "gateway", m)
		g := &Gateway{cfg: Config{Shedder: l}, metrics: newHTTPMetrics(prometheus.NewRegistry())}
		var running, top atomic.Int32
		start := time.Now()
		h := g.measure(g.shed(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			n := running.Add(1)
			if time.Since(start) > 200*time.Millisecond { // after the first completions
				for cur := top.Load(); n > cur && !top.CompareAndSwap(cur, n); cur = top.Load() {
				}
			}
			time.Sleep(5 * time.Millisecond)
			running.Add(-1)
			w.WriteHeader(code)
		})))
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				for time.Since(start) < 500*time.Millisecond {
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/users/x", nil))
					if rec.Code == http.StatusTooManyRequests && rec.Header().Get("Retry-After") != "" {
						time.Sleep(time.Millisecond) // the gateway's own refusal
					}
				}
			})
		}
		wg.Wait()
		return top.Load()
	}
	if p := peak(http.StatusTooManyRequests); p > 6 {
		t.Errorf("requests refused behind the gateway: %d in flight; want the minimum of 4 (at most 6): the refusals counted as completions", p)
	}
	if p := peak(http.StatusOK); p < 7 {
		t.Errorf("requests served: at most %d in flight; want the adaptive limit's 8", p)
	}
}

// TestStatusOf: the code measure's recorder saw, through wrappers that
// unwrap; 0 without a recorder.
func TestStatusOf(t *testing.T) {
	rec := &statusRecorder{ResponseWriter: httptest.NewRecorder(), code: http.StatusOK}
	rec.WriteHeader(http.StatusTooManyRequests)
	if got := statusOf(unwrapping{rec}); got != http.StatusTooManyRequests {
		t.Errorf("through a wrapper: %d, want 429", got)
	}
	if got := statusOf(httptest.NewRecorder()); got != 0 {
		t.Errorf("no recorder: %d, want 0", got)
	}
}

type unwrapping struct{ http.ResponseWriter }

func (u unwrapping) Unwrap() http.ResponseWriter { return u.ResponseWriter }
