package main

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestClosedLoopStopsAtTheCountBound(t *testing.T) {
	var calls atomic.Int64
	res := closedLoop(context.Background(), 8, bounds{d: time.Minute, n: 500}, func(context.Context) error {
		calls.Add(1)
		return nil
	})
	if calls.Load() != 500 || res.Requests != 500 {
		t.Fatalf("count bound 500: %d calls, %d recorded", calls.Load(), res.Requests)
	}
	if res.Seconds > 10 {
		t.Errorf("the count bound did not end the run: %.1f s", res.Seconds)
	}
}

func TestClosedLoopStopsAtTheTimeBound(t *testing.T) {
	start := time.Now()
	res := closedLoop(context.Background(), 4, bounds{d: 200 * time.Millisecond}, func(context.Context) error {
		time.Sleep(time.Millisecond)
		return nil
	})
	if el := time.Since(start); el < 200*time.Millisecond || el > 2*time.Second {
		t.Errorf("time bound 200ms: ran %v", el)
	}
	if res.Requests < 50 {
		t.Errorf("4 callers of a 1 ms call for 200 ms made only %d requests", res.Requests)
	}
}

func TestLoadCountsErrorsByCode(t *testing.T) {
	var n atomic.Int64
	res := closedLoop(context.Background(), 2, bounds{d: time.Minute, n: 100}, func(context.Context) error {
		switch n.Add(1) % 4 {
		case 0:
			return status.Error(codes.Unavailable, "down")
		case 1:
			return httpError{status: "503"}
		}
		return nil
	})
	if res.Errors["Unavailable"] != 25 || res.Errors["HTTP 503"] != 25 {
		t.Fatalf("errors by code: %v, want 25 Unavailable and 25 HTTP 503", res.Errors)
	}
}

// In open loop a slow system must not slow the generator down: requests
// stay due at the fixed rate, and latency counts from when each was due.
func TestOpenLoopKeepsTheRateAndMeasuresFromTheDueTime(t *testing.T) {
	res := openLoop(context.Background(), 200, bounds{d: 500 * time.Millisecond}, func(context.Context) error {
		time.Sleep(40 * time.Millisecond)
		return nil
	})
	if res.Requests != 100 {
		t.Fatalf("200/s for 500 ms sent %d requests, want 100", res.Requests)
	}
	if res.P50ms < 40 || res.P99ms > 1000 {
		t.Errorf("a 40 ms call measured p50 %.1f ms, p99 %.1f ms", res.P50ms, res.P99ms)
	}
	capped := openLoop(context.Background(), 1000, bounds{d: time.Minute, n: 30}, func(context.Context) error { return nil })
	if capped.Requests != 30 {
		t.Errorf("count bound 30 at 1000/s for a minute: %d requests", capped.Requests)
	}
}

func TestFloors(t *testing.T) {
	rep := &report{Ratios: map[string]float64{"chain_throughput": 0.9, "gateway_throughput_GetUser": 0.3},
		Floors: map[string]float64{"chain_throughput": 0.85, "gateway_throughput_GetUser": 0.5, "relay_vs_raw_publish": 0.4}}
	failed := checkFloors(rep, false)
	if len(failed) != 2 || !strings.Contains(failed[0], "gateway_throughput_GetUser = 0.300") || !strings.Contains(failed[1], "relay_vs_raw_publish was not measured") {
		t.Fatalf("floors: %q", failed)
	}
	if failed := checkFloors(rep, true); len(failed) != 1 {
		t.Fatalf("with some scenarios selected, only measured ratios are checked: %q", failed)
	}
}

func TestHTMLReportIsSelfContained(t *testing.T) {
	res := closedLoop(context.Background(), 2, bounds{d: time.Minute, n: 50}, func(context.Context) error { return nil })
	rep := &report{Profile: "quick", Machine: "test", Ratios: map[string]float64{"chain_throughput": 0.91}, Floors: map[string]float64{"chain_throughput": 0.85},
		Rows: []row{
			{Scenario: "1 unary GetUser", Profile: "all-in-one", Name: "bare grpc-go", Baseline: true, Result: res},
			{Scenario: "1 unary GetUser", Profile: "all-in-one", Name: "Trellis mesh chain", Result: res},
			{Scenario: "3 CreateOrder end to end", Profile: "all-in-one", Name: "100/s", Result: res},
			{Scenario: "8 overload", Profile: "all-in-one", Name: "unprotected, 4×", Result: res},
			{Scenario: "8 overload", Profile: "all-in-one", Name: "shedding (--shed --shed-gateway), 4×", Result: res},
		}}
	page := html(rep)
	for _, want := range []string{"Licensed to the Apache Software Foundation", "echarts.init(", "Trellis mesh chain", "bare grpc-go (baseline)", "chain_throughput", "0.910", "100/s",
		"Overload: goodput and created p99 by offered load", "shedding (--shed --shed-gateway) goodput", "unprotected p99"} {
		if !strings.Contains(page, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	for _, external := range []string{`src="http`, `href="http`, "cdn", "go-echarts.github.io"} {
		if strings.Contains(page, external) {
			t.Errorf("report loads something from elsewhere: %q", external)
		}
	}
	md := markdown(rep)
	if !strings.Contains(md, "| 1 unary GetUser | all-in-one | bare grpc-go (baseline) | ") {
		t.Errorf("markdown table:\n%s", md)
	}
}

// The netpoll mode's server answers 429 under either kind of busy work,
// refuses a kind it does not know, and stops every goroutine it started.
func TestNetpollServerAnswersWhileBusyAndStops(t *testing.T) {
	for _, kind := range []string{"chan", "net"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		others := goleak.IgnoreCurrent()
		go func() { done <- serveBusy(ctx, ln, kind, 4) }()
		tr := &http.Transport{}
		for range 5 {
			resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://" + ln.Addr().String() + "/")
			if err != nil {
				t.Fatalf("%s: %v", kind, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusTooManyRequests {
				t.Fatalf("%s: %s, want 429", kind, resp.Status)
			}
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: %v", kind, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the server did not stop 10 s after its context ended", kind)
		}
		tr.CloseIdleConnections()
		if err := goleak.Find(others); err != nil {
			t.Fatalf("%s: goroutines left after the server stopped: %v", kind, err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := serveBusy(context.Background(), ln, "spin", 1); err == nil {
		t.Fatal("an unknown kind was accepted")
	}
}

// TestKneeSearch: the search ends within an eighth of the true knee
// (at least 50/s), never above it, for knees across the range it covers.
func TestKneeSearch(t *testing.T) {
	for knee := 50; knee <= 7000; knee += 10 {
		calls := 0
		got := kneeSearch(6400, func(rate int) bool { calls++; return rate <= knee })
		want := min(knee, 6400)
		if got > want || (want >= 100 && want-got > max(got/8, 50)) {
			t.Errorf("knee %d: found %d", knee, got)
		}
		if calls > 11 {
			t.Errorf("knee %d: %d rates tried", knee, calls)
		}
	}
}
