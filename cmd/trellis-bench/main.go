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
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "serve-bare": // scenario 1's baseline server
			exitOn(serveBare(os.Args[2:]))
		case "serve-bare-gateway": // scenario 2's baseline gateway
			exitOn(serveBareGateway(os.Args[2:]))
		case "netpoll": // a busy Go process's answer time (docs/resilience.md)
			exitOn(netpollReport())
		case "netpoll-serve": // its server
			exitOn(netpollServe(os.Args[2:]))
		}
	}
	os.Exit(run())
}

// exitOn ends a baseline server: status 1 with the error, 0 without.
func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// checkFloors lists every ratio under its floor. A ratio that was not
// measured fails too, unless only some scenarios were selected.
func checkFloors(rep *report, partial bool) []string {
	var failed []string
	for _, k := range sortedKeys(rep.Floors) {
		got, ok := rep.Ratios[k]
		switch {
		case !ok && partial:
		case !ok:
			failed = append(failed, fmt.Sprintf("%s was not measured (floor %.3f)", k, rep.Floors[k]))
		case got < rep.Floors[k]:
			failed = append(failed, fmt.Sprintf("%s = %.3f, under the floor %.3f", k, got, rep.Floors[k]))
		}
	}
	return failed
}

func run() int {
	profile := flag.String("profile", "quick", "quick (under 2 minutes, what CI runs) or full")
	bin := flag.String("trellis", "bin/trellis", "trellis binary to benchmark")
	out := flag.String("out", "bench", "directory for results.json and report.html")
	floors := flag.String("floors", "bench/floors.json", "ratio floors to check; empty: check none")
	pgURL := flag.String("database-url", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL for the split profile (a database is created and dropped)")
	natsBin := flag.String("nats-server", "/usr/sbin/nats-server", "nats-server binary for the split profile")
	only := flag.String("scenarios", "", "comma-separated scenario numbers to run (e.g. 1,2); empty: all of the profile's")
	rounds := flag.Int("rounds", 0, "interleaved baseline/candidate rounds per ratio; 0: the profile's (quick 7, full 5)")
	dur := flag.Duration("duration", 0, "time bound of each load run; 0: the profile's (quick 1.2s, full 5s)")
	requests := flag.Int64("requests", 0, "count bound of each load run (it ends at whichever bound comes first); 0: time only")
	from := flag.String("from", "", "render the Markdown table and report.html of an earlier results.json into -out, running nothing")
	conc := flag.Int("concurrency", 32, "callers of a closed-loop run")
	protect := flag.String("overload-flags", "", "extra trellis flags of scenario 8's protected system (space-separated), to try shedding settings")
	baseRate := flag.Int("overload-rate", 0, "scenario 8's 1× rate in orders/s instead of the knee it searches for, so that runs of different settings offer the same load (0: search)")
	cpuLimit := flag.Float64("overload-cpu-limit", 0, "scenario 8 with the system in a cgroup limited to this many CPUs (as Docker's --cpus or a Kubernetes CPU limit), unpinned, instead of on CPUs of its own (needs root; 0: pinned)")
	flag.Parse()
	if *baseRate < 0 {
		fmt.Fprintln(os.Stderr, "trellis-bench: -overload-rate must not be negative")
		return 2
	}
	if !(*cpuLimit >= 0 && *cpuLimit <= float64(runtime.NumCPU())) {
		fmt.Fprintln(os.Stderr, "trellis-bench: -overload-cpu-limit must be from 0 to the machine's CPUs")
		return 2
	}
	if *from != "" {
		return rerender(*from, *out)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tmp, err := os.MkdirTemp("", "trellis-bench")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	logDir = tmp
	r := &runner{bin: *bin, tmp: tmp, quick: *profile == "quick", profile: "all-in-one (SQLite, embedded NATS)", conc: *conc, requests: *requests, protect: strings.Fields(*protect), baseRate: *baseRate, cpuLimit: *cpuLimit,
		rep: &report{Profile: *profile, Started: time.Now().UTC(), Ratios: map[string]float64{}, Floors: map[string]float64{},
			Machine: fmt.Sprintf("%s/%s, %d CPUs", runtime.GOOS, runtime.GOARCH, runtime.NumCPU())}}
	// The quick profile gates CI: more, shorter rounds, so that one noisy
	// round moves the median less.
	r.rounds, r.dur = 7, 1200*time.Millisecond
	if !r.quick {
		r.rounds, r.dur = 5, 5*time.Second
	}
	if *rounds > 0 {
		r.rounds = *rounds
	}
	if *dur > 0 {
		r.dur = *dur
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
			if err := r.gateway(ctx, target{user: sys.user, http: sys.http, procs: map[string]*proc{"trellis": sys.proc}}); err != nil {
				return err
			}
			return r.gatewayLayer(ctx, sys)
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
		{"6 security cost", r.mtls},
		{"7 token verification", r.tokens},
		{"8 overload", r.overload},
	}
	steps = append(steps, struct {
		name string
		fn   func(context.Context) error
	}{"split — scenarios 2, 3 and 8 with a process per component, PostgreSQL and a NATS server", func(ctx context.Context) error {
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
		if err := r.maxRate(ctx, t); err != nil {
			return err
		}
		sys.stop() // scenario 8 runs two split systems of its own
		return r.overloadSplit(ctx, *pgURL, *natsBin)
	}})
	for _, s := range steps {
		id := strings.Fields(s.name)[0]
		selected := slices.Contains(strings.Split(*only, ","), id)
		// The quick profile runs the split system only when asked to.
		if *only != "" && !selected || *only == "" && r.quick && id == "split" {
			continue
		}
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
		r.rep.Failed = append(r.rep.Failed, checkFloors(r.rep, *only != "")...)
	}
	fmt.Print(markdown(r.rep))
	if err := write(r.rep, *out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if len(r.rep.Failed) > 0 {
		fmt.Fprintln(os.Stderr, "trellis-bench: FAIL:\n  "+strings.Join(r.rep.Failed, "\n  "))
		return 1
	}
	return 0
}

// write saves the report as results.json and report.html in dir.
func write(rep *report, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), b, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.html"), []byte(html(rep)), 0o644)
}

// rerender renders an earlier run's results.json again (-from).
func rerender(path, dir string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
		return 1
	}
	fmt.Print(markdown(&rep))
	if err := write(&rep, dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
