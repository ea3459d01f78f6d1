// Command trellis-bench is Trellis's load harness (make bench, make
// bench-quick): it starts the system itself, warms it up, and runs each
// scenario beside its baseline in the same run — throughput, latency
// percentiles from HDR histograms (coordinated-omission aware in open
// loop), errors by code, CPU seconds and peak RSS per process — then
// writes a Markdown table to stdout, bench/results.json and
// bench/report.html, and checks the ratios against bench/floors.json.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve-bare" {
		os.Exit(serveBare(os.Args[2:]))
	}
	os.Exit(run())
}

func run() int {
	profile := flag.String("profile", "quick", "quick (under 2 minutes, what CI runs) or full")
	bin := flag.String("trellis", "bin/trellis", "trellis binary to benchmark")
	out := flag.String("out", "bench", "directory for results.json and report.html")
	floors := flag.String("floors", "bench/floors.json", "ratio floors to check; empty: check none")
	pgURL := flag.String("database-url", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL for the split profile (a database is created and dropped)")
	natsBin := flag.String("nats-server", "/usr/sbin/nats-server", "nats-server binary for the split profile")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tmp, err := os.MkdirTemp("", "trellis-bench")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	r := &runner{bin: *bin, tmp: tmp, quick: *profile == "quick", profile: "all-in-one (SQLite, embedded NATS)", conc: 32,
		rep: &report{Profile: *profile, Started: time.Now().UTC(), Ratios: map[string]float64{}, Floors: map[string]float64{},
			Machine: fmt.Sprintf("%s/%s, %d CPUs", runtime.GOOS, runtime.GOARCH, runtime.NumCPU())}}
	r.rounds, r.dur = 3, 2*time.Second
	if !r.quick {
		r.rounds, r.dur = 5, 5*time.Second
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				r.rep.Machine += ", " + strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}

	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"1 chain vs bare", r.chain},
		{"2 gateway vs direct", func(ctx context.Context) error {
			sys, err := runTrellis(r.bin, "trellis", filepath.Join(tmp, "sys2"))
			if err != nil {
				return err
			}
			defer sys.stop()
			return r.gateway(ctx, target{user: sys.user, http: sys.http, procs: map[string]*proc{"trellis": sys.proc}})
		}},
		{"3 max CreateOrder rate", func(ctx context.Context) error {
			sys, err := runTrellis(r.bin, "trellis", filepath.Join(tmp, "sys3"))
			if err != nil {
				return err
			}
			defer sys.stop()
			return r.maxRate(ctx, target{user: sys.user, http: sys.http, procs: map[string]*proc{"trellis": sys.proc}})
		}},
		{"4 events", r.events},
		{"5 breaker", r.breaker},
	}
	if !r.quick {
		steps = append(steps, struct {
			name string
			fn   func(context.Context) error
		}{"2+3 split profile (a process per component, PostgreSQL, NATS)", func(ctx context.Context) error {
			sys, err := runSplit(r.bin, tmp, *pgURL, *natsBin)
			if err != nil {
				return err
			}
			defer sys.stop()
			r.profile = "split (process per component, PostgreSQL, NATS)"
			t := target{user: sys.user, http: sys.http, procs: sys.procs}
			if err := r.gateway(ctx, t); err != nil {
				return err
			}
			return r.maxRate(ctx, t)
		}})
	}
	for _, s := range steps {
		fmt.Fprintf(os.Stderr, "trellis-bench: scenario %s...\n", s.name)
		if err := s.fn(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "trellis-bench: scenario %s: %v\n", s.name, err)
			r.rep.Failed = append(r.rep.Failed, s.name+": "+err.Error())
		}
	}
	if *floors != "" {
		b, err := os.ReadFile(*floors)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := json.Unmarshal(b, &r.rep.Floors); err != nil {
			fmt.Fprintln(os.Stderr, "floors:", err)
			return 1
		}
		for k, floor := range r.rep.Floors {
			got, ok := r.rep.Ratios[k]
			if !ok || got < floor {
				r.rep.Failed = append(r.rep.Failed, fmt.Sprintf("%s = %.3f, under the floor %.3f", k, got, floor))
			}
		}
	}
	fmt.Print(markdown(r.rep))
	if err := os.MkdirAll(*out, 0o755); err == nil {
		b, _ := json.MarshalIndent(r.rep, "", "  ")
		_ = os.WriteFile(filepath.Join(*out, "results.json"), b, 0o644)
		_ = os.WriteFile(filepath.Join(*out, "report.html"), []byte(html(r.rep)), 0o644)
	}
	if len(r.rep.Failed) > 0 {
		fmt.Fprintln(os.Stderr, "trellis-bench: FAIL:\n  "+strings.Join(r.rep.Failed, "\n  "))
		return 1
	}
	return 0
}
