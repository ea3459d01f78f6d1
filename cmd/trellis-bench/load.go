package main

import (
	"context"
	"sync"
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
	hist       *hdrhistogram.Histogram
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
}

func (r *result) finish(h *hdrhistogram.Histogram, elapsed time.Duration) {
	r.hist = h
	r.Seconds = elapsed.Seconds()
	r.Requests = h.TotalCount()
	r.Throughput = float64(r.Requests) / r.Seconds
	ms := func(q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1000 }
	r.P50ms, r.P90ms, r.P99ms, r.P999ms = ms(50), ms(90), ms(99), ms(99.9)
}

func codeOf(err error) string {
	if he, ok := err.(httpError); ok {
		return "HTTP " + he.status
	}
	return status.Code(err).String()
}

// closedLoop runs conc callers back to back for d: throughput under load.
func closedLoop(ctx context.Context, conc int, d time.Duration, fn call) *result {
	var mu sync.Mutex
	h := newHist()
	errs := map[string]int64{}
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			local := newHist()
			localErrs := map[string]int64{}
			for time.Now().Before(deadline) && ctx.Err() == nil {
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

// openLoop sends at a fixed rate for d, each request on its own goroutine.
// Latency is measured from when the request was due, not when it was
// sent, so a stalled system cannot hide its queueing (coordinated
// omission).
func openLoop(ctx context.Context, rate int, d time.Duration, fn call) *result {
	var mu sync.Mutex
	h := newHist()
	errs := map[string]int64{}
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	n := int(d / interval)
	var wg sync.WaitGroup
	for i := range n {
		due := start.Add(time.Duration(i) * interval)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		wg.Go(func() {
			err := fn(ctx)
			lat := time.Since(due)
			mu.Lock()
			_ = h.RecordValue(lat.Microseconds())
			if err != nil {
				errs[codeOf(err)]++
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	r := &result{Errors: errs}
	r.finish(h, time.Since(start))
	return r
}
