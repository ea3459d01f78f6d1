package main

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/uuid"
)

// Scenario 8: overload. CreateOrder end to end, open loop, at 1×, 2× and
// 4× the maximum sustainable rate — scenario 3's in this run, or, when
// that stopped below the knee (the quick profile tries only up to 400/s),
// the highest of 800, 1600, 3200/s this scenario finds sustained (p99
// under 50 ms, under 1% errors) on the unprotected system — against two
// identical all-in-one systems: one with
// load shedding (--shed --shed-gateway), one without; the rates and the
// systems interleaved. Goodput counts created orders per second; latency
// of created orders and of refusals (429) is measured apart, from when
// each request was due.
func (r *runner) overload(ctx context.Context) error {
	base := int(r.rep.Ratios["max_sustainable_create_order_per_s"])
	if base == 0 {
		base = 400
	}
	systems := []struct {
		name  string
		extra []string
		sys   *trellis
		order call
	}{{name: "unprotected"}, {name: "shedding (--shed --shed-gateway)", extra: []string{"--shed", "--shed-gateway"}}}
	for i := range systems {
		s := &systems[i]
		sys, err := runTrellis(r.bin, fmt.Sprintf("trellis-overload-%d", i), filepath.Join(r.tmp, fmt.Sprintf("overload-%d", i)), s.extra...)
		if err != nil {
			return err
		}
		defer sys.stop()
		uid, token, err := signUpAt(ctx, sys.user)
		if err != nil {
			return err
		}
		url := "http://" + sys.http + "/api/v1/orders"
		s.sys, s.order = sys, func(ctx context.Context) error {
			body := `{"userId":"` + uid + `","requestId":"` + uuid.NewString() + `","items":[{"productId":"p","quantity":1,"unitPrice":{"currencyCode":"EUR","amountMinor":"100"}}]}`
			return httpDo(ctx, "POST", url, body, 201, token)
		}
		openLoop(ctx, base/2, warmup, s.order)
	}
	// Find the knee when scenario 3 did not reach it.
	for _, rate := range []int{800, 1600, 3200} {
		if rate <= base {
			continue
		}
		res := openLoop(ctx, rate, bounds{d: time.Second}, systems[0].order)
		var errs int64
		for _, n := range res.Errors {
			errs += n
		}
		if res.P99ms >= 50 || float64(errs) >= 0.01*float64(res.Requests) {
			break
		}
		base = rate
	}
	r.rep.Ratios["overload_base_per_s"] = float64(base)
	goodput := map[string]map[int]float64{}
	p99 := map[string]map[int]float64{}
	for _, mult := range []int{1, 2, 4} {
		for _, s := range systems {
			ok, refused, other := openLoopSplit(ctx, base*mult, r.bounds(), s.order)
			if goodput[s.name] == nil {
				goodput[s.name], p99[s.name] = map[int]float64{}, map[int]float64{}
			}
			goodput[s.name][mult], p99[s.name][mult] = ok.Throughput, ok.P99ms
			note := fmt.Sprintf("%d/s offered (%d× %d/s): goodput %.0f/s (%.0f%% of %d/s), created p99 %.1f ms; refused (429) %d, p50 %.2f ms p99 %.2f ms; other errors %v",
				base*mult, mult, base, ok.Throughput, 100*ok.Throughput/float64(base), base, ok.P99ms, refused.Requests, refused.P50ms, refused.P99ms, other)
			r.add("8 overload", fmt.Sprintf("%s, %d×", s.name, mult), mult == 1 && s.name == "unprotected", ok, map[string]*proc{"trellis": s.sys.proc}, note)
		}
	}
	prot, plain := systems[1].name, systems[0].name
	r.rep.Ratios["overload_goodput_4x_protected"] = goodput[prot][4] / float64(base)
	r.rep.Ratios["overload_goodput_4x_unprotected"] = goodput[plain][4] / float64(base)
	if p99[prot][4] > 0 {
		r.rep.Ratios["overload_p99_gain_4x"] = p99[plain][4] / p99[prot][4]
	}
	return nil
}

// openLoopSplit is openLoop with the answers told apart: created (the
// call succeeded), refused (HTTP 429), and other errors by code.
func openLoopSplit(ctx context.Context, rate int, b bounds, fn call) (ok, refused *result, other map[string]int64) {
	var mu sync.Mutex
	okH, refH := newHist(), newHist()
	other = map[string]int64{}
	elapsed := schedule(ctx, rate, b, func(due time.Time) {
		err := fn(ctx)
		lat := time.Since(due).Microseconds()
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil:
			_ = okH.RecordValue(lat)
		case codeOf(err) == "HTTP 429":
			_ = refH.RecordValue(lat)
		default:
			other[codeOf(err)]++
		}
	})
	ok, refused = &result{}, &result{}
	ok.finish(okH, elapsed)
	refused.finish(refH, elapsed)
	return ok, refused, other
}
