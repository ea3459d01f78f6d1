package gateway

import (
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

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

// BenchmarkShedRefusal is the gateway's cost of one refusal of its own:
// the limiter full and short of CPU, the answer written (429, Retry-After,
// RESOURCE_EXHAUSTED with RetryInfo). Under overload most requests are
// this: at 4x the knee, 3 of 4.
func BenchmarkShedRefusal(b *testing.B) {
	m, _ := testenv.Metrics()
	l := mesh.NewLimiter(mesh.ShedConfig{Enabled: true, MinLimit: 1, MaxLimit: 1, Pushback: 250 * time.Millisecond, RunQueue: 1,
		Saturated: func() bool { return true }}, "gateway", m)
	hold, _, _ := l.Admit(b.Context(), "hold") // the one slot, taken
	defer hold(false)
	g := &Gateway{cfg: Config{Shedder: l}, metrics: newHTTPMetrics(prometheus.NewRegistry())}
	h := g.shed(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { b.Fatal("admitted") }))
	req := httptest.NewRequest("POST", "/api/v1/orders", nil)
	w := &discard{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
	}
	if w.code != http.StatusTooManyRequests {
		b.Fatalf("status %d", w.code)
	}
}

// discard is a ResponseWriter that keeps only the status.
type discard struct {
	h    http.Header
	code int
}

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(code int)        { d.code = code }

// TestOverloadedIsWhatWriteErrorWrites: the gateway's own refusal, encoded
// without protojson's Any, is the answer writeError makes of the same
// status — status code, Retry-After, Content-Type, and a body protojson
// reads as the same google.rpc.Status — for any retry delay: random ones,
// and those with nanoseconds, whole seconds and none.
func TestOverloadedIsWhatWriteErrorWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	delays := []time.Duration{0, 1, time.Millisecond, 999 * time.Millisecond, time.Second, 1500 * time.Millisecond, time.Hour + 1}
	for range 2000 {
		delays = append(delays, time.Duration(rng.Int64N(int64(20*time.Second))))
	}
	g := &Gateway{}
	for _, d := range delays {
		st, err := status.New(codes.ResourceExhausted, overloadedMessage).WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
		if err != nil {
			t.Fatal(err)
		}
		want := httptest.NewRecorder()
		g.writeError(t.Context(), nil, nil, want, httptest.NewRequest("POST", "/api/v1/orders", nil), st.Err())
		got := httptest.NewRecorder()
		writeOverloaded(got, d)
		var a, b spb.Status
		if err := protojson.Unmarshal(got.Body.Bytes(), &a); err != nil {
			t.Fatalf("%v: %v: %s", d, err, got.Body)
		}
		if err := protojson.Unmarshal(want.Body.Bytes(), &b); err != nil {
			t.Fatal(err)
		}
		for _, h := range []string{"Retry-After", "Content-Type"} {
			if got.Header().Get(h) != want.Header().Get(h) {
				t.Errorf("%v: %s %q, writeError's %q", d, h, got.Header().Get(h), want.Header().Get(h))
			}
		}
		if got.Code != want.Code || !proto.Equal(&a, &b) {
			t.Fatalf("%v: %d %s; writeError: %d %s", d, got.Code, got.Body, want.Code, want.Body)
		}
	}
}
