package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"google.golang.org/grpc/status"
)

// call is one request; it returns an error whose gRPC code (or HTTP
// status, see httpError) classifies the failure.
type call func(ctx context.Context) error

// result is what one load run measured.
type result struct {
	Requests   int64            `json:"requests"`
	Seconds    float64          `json:"seconds"`
	Throughput float64          `json:"throughput_per_s"`
	P50ms      float64          `json:"p50_ms"`
	P90ms      float64          `json:"p90_ms"`
	P99ms      float64          `json:"p99_ms"`
	P999ms     float64          `json:"p999_ms"`
	Errors     map[string]int64 `json:"errors_by_code,omitempty"`
	// ServerCPUus is the CPU time the system's processes spent per
	// request (µs), read from /proc around the run: a steadier measure
	// than throughput on a shared machine, and free of the load
	// generator's own cost.
	ServerCPUus float64 `json:"server_cpu_us_per_request,omitempty"`
	// Spectrum is the latency at each of spectrumQuantiles: the histogram,
	// kept for the report's percentile chart.
	Spectrum []quantile `json:"latency_spectrum,omitempty"`
}

// quantile is the latency at one percentile.
type quantile struct {
	Percentile float64 `json:"percentile"`
	Ms         float64 `json:"ms"`
}

var spectrumQuantiles = []float64{25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100}

// measured runs fn and sets the result's CPU per request of procs.
func measured(fn func() *result, procs ...*proc) *result {
	cpu := func() (s float64) {
		for _, p := range procs {
			s += p.Usage().CPUSeconds
		}
		return s
	}
	before := cpu()
	r := fn()
	if r.Requests > 0 {
		r.ServerCPUus = (cpu() - before) / float64(r.Requests) * 1e6
	}
	return r
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
}

func (r *result) finish(h *hdrhistogram.Histogram, elapsed time.Duration) {
	r.Seconds = elapsed.Seconds()
	r.Requests = h.TotalCount()
	r.Throughput = float64(r.Requests) / r.Seconds
	ms := func(q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1000 }
	r.P50ms, r.P90ms, r.P99ms, r.P999ms = ms(50), ms(90), ms(99), ms(99.9)
	if r.Requests > 0 {
		for _, q := range spectrumQuantiles {
			r.Spectrum = append(r.Spectrum, quantile{q, ms(q)})
		}
	}
}

func codeOf(err error) string {
	if he, ok := err.(httpError); ok {
		return "HTTP " + he.status
	}
	return status.Code(err).String()
}

// bounds end a load run: after d, or after n requests when n > 0,
// whichever comes first.
type bounds struct {
	d time.Duration
	n int64
}

// closedLoop runs conc callers back to back until b: throughput under load.
func closedLoop(ctx context.Context, conc int, b bounds, fn call) *result {
	var mu sync.Mutex
	h := newHist()
	errs := map[string]int64{}
	start := time.Now()
	deadline := start.Add(b.d)
	var issued atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			local := newHist()
			localErrs := map[string]int64{}
			for time.Now().Before(deadline) && ctx.Err() == nil && (b.n <= 0 || issued.Add(1) <= b.n) {
				t := time.Now()
				if err := fn(ctx); err != nil {
					localErrs[codeOf(err)]++
				}
				_ = local.RecordValue(time.Since(t).Microseconds())
			}
			mu.Lock()
			h.Merge(local)
			for k, v := range localErrs {
				errs[k] += v
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	r := &result{Errors: errs}
	r.finish(h, time.Since(start))
	return r
}

// openLoop sends at a fixed rate until b, each request on its own goroutine.
// Latency is measured from when the request was due, not when it was
// sent, so a stalled system cannot hide its queueing (coordinated
// omission).
func openLoop(ctx context.Context, rate int, b bounds, fn call) *result {
	var mu sync.Mutex
	h := newHist()
	errs := map[string]int64{}
	elapsed := schedule(ctx, rate, b, func(due time.Time) {
		err := fn(ctx)
		lat := time.Since(due)
		mu.Lock()
		_ = h.RecordValue(lat.Microseconds())
		if err != nil {
			errs[codeOf(err)]++
		}
		mu.Unlock()
	})
	r := &result{Errors: errs}
	r.finish(h, elapsed)
	return r
}

// schedule calls one at rate per second until b, each call on its own
// goroutine and told when it was due; it waits for them all and returns
// the time it took.
func schedule(ctx context.Context, rate int, b bounds, one func(due time.Time)) time.Duration {
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	n := int64(b.d / interval)
	if b.n > 0 {
		n = min(n, b.n)
	}
	var wg sync.WaitGroup
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		due := start.Add(time.Duration(i) * interval)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		wg.Go(func() { one(due) })
	}
	wg.Wait()
	return time.Since(start)
}
