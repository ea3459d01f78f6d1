package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// netpollReport is `trellis-bench netpoll`: how long a Go process whose
// one CPU is always busy takes to answer the cheapest HTTP request there
// is (a bare 429) — the floor under a refusal in an overloaded process,
// which no shedding setting moves. Each server runs on the system's CPU
// with busy goroutines of one of two kinds:
//
//   - chan: pairs handing work to each other over channels. A goroutine
//     woken by another goroutine goes on its P's local run queue; one woken
//     by the network is found only by a netpoll, which a P runs when its
//     local and global run queues are empty — otherwise the runtime's
//     monitor polls every 10 ms and queues what it finds on the global
//     run queue, which a P busy with local work serves once in 61
//     schedules (go1.26 runtime/proc.go: findRunnable, sysmon).
//   - net: goroutines doing loopback round trips: all their wake-ups come
//     from the network, the queues empty, and the poll is prompt.
//
// The load generator (this process) is on the other CPU, 500 requests/s
// open loop for 2 s per row. docs/resilience.md ("Overload") has the
// numbers and what they mean for Trellis's refusals.
func netpollReport() error {
	where := "server and load generator sharing every CPU"
	if desc, undo, ok := splitCPUs(); ok {
		defer undo()
		where = desc
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "trellis-bench-netpoll")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	logDir = tmp // the servers' output
	procs := os.Getenv("GOMAXPROCS")
	if procs == "" {
		procs = "default: the server's CPUs"
	}
	fmt.Printf("Answer time of a bare 429 while the server's CPU is busy (%s; GOMAXPROCS %s)\n\n", where, procs)
	fmt.Println("| busy goroutines | kind | p50 ms | p90 ms | p99 ms |")
	fmt.Println("|---:|---|---:|---:|---:|")
	// Interrupted, it stops the server it started, as run does.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, kind := range []string{"chan", "net"} {
		for _, n := range []int{0, 2, 8, 32} {
			addr := freeAddr()
			p, err := start("netpoll", self, "netpoll-serve", "-addr", addr, "-kind", kind, "-busy", strconv.Itoa(n))
			if err != nil {
				return err
			}
			if err := waitTCP(addr); err != nil {
				p.stop()
				return fmt.Errorf("%w: %s", err, p.logTail())
			}
			url := "http://" + addr + "/"
			res := openLoop(ctx, 500, bounds{d: 2 * time.Second}, func(ctx context.Context) error {
				return httpDo(ctx, "GET", url, "", http.StatusTooManyRequests)
			})
			p.stop()
			if err := ctx.Err(); err != nil {
				return err
			}
			if len(res.Errors) > 0 {
				return fmt.Errorf("netpoll %s %d: errors %v", kind, n, res.Errors)
			}
			fmt.Printf("| %d | %s | %.2f | %.2f | %.2f |\n", n, kind, res.P50ms, res.P90ms, res.P99ms)
		}
	}
	return nil
}

// netpollServe is the server of netpollReport.
func netpollServe(args []string) error {
	fs := flag.NewFlagSet("netpoll-serve", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "HTTP listen address")
	kind := fs.String("kind", "chan", "chan: busy goroutines hand work over channels; net: over loopback connections")
	busy := fs.Int("busy", 0, "busy goroutines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	return serveBusy(context.Background(), ln, *kind, *busy)
}

// serveBusy answers every HTTP request on ln with a bare 429 while busy
// goroutines of the kind ("chan" or "net") keep the CPU busy, until ctx
// ends; then it stops them all and returns nil.
func serveBusy(ctx context.Context, ln net.Listener, kind string, busy int) error {
	defer ln.Close() // Serve closes it too; this is for the early returns
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var closers []io.Closer // the echo listener and every connection
	var mu sync.Mutex
	track := func(c io.Closer) {
		mu.Lock()
		closers = append(closers, c)
		mu.Unlock()
	}
	defer func() {
		mu.Lock()
		for _, c := range closers {
			c.Close()
		}
		mu.Unlock()
	}()
	switch kind {
	case "net":
		echo, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		track(echo)
		wg.Go(func() {
			for {
				c, err := echo.Accept()
				if err != nil {
					return
				}
				track(c)
				wg.Go(func() { _, _ = io.Copy(c, c) })
			}
		})
		for range busy {
			c, err := net.Dial("tcp", echo.Addr().String())
			if err != nil {
				return err
			}
			track(c)
			wg.Go(func() {
				b := []byte{0}
				for ctx.Err() == nil {
					spin()
					if _, err := c.Write(b); err != nil {
						return
					}
					if _, err := io.ReadFull(c, b); err != nil {
						return
					}
				}
			})
		}
	case "chan":
		for range (busy + 1) / 2 { // a pair per two goroutines
			to := make(chan struct{})
			wg.Go(func() {
				for range to {
					spin()
				}
			})
			wg.Go(func() {
				defer close(to)
				for {
					spin()
					select {
					case to <- struct{}{}:
					case <-ctx.Done():
						return
					}
				}
			})
		}
	default:
		return fmt.Errorf("netpoll-serve: -kind is chan or net, not %q", kind)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusTooManyRequests)
	}), ReadHeaderTimeout: 10 * time.Second}
	wg.Go(func() {
		<-ctx.Done()
		_ = srv.Close()
	})
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// spinSink keeps spin's loop from being optimised away.
var spinSink atomic.Uint64

// spin burns some 10-20 µs of CPU, like a handler's step.
func spin() {
	var s uint64
	for i := range uint64(20000) {
		s += i * i
	}
	spinSink.Add(s)
}
