package connlimit_test

import (
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/connlimit"
)

// TestConnListenerStorm: many clients open and close connections at
// random, at once, on a real socket. Whatever the order, the server never
// holds more than the limits allow (per client and in all), some
// connections are refused and some served, and once every client has
// gone the listener's counts are back to nothing: no place is leaked or
// given back twice.
func TestConnListenerStorm(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	open := prometheus.NewGauge(prometheus.GaugeOpts{Name: "open"})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refused"}, []string{"reason"})
	l := connlimit.New(lis, connlimit.Limits{Max: 10, PerClient: 3}, connlimit.Options{Open: open, Refused: refused}).(*connlimit.Listener)

	var mu sync.Mutex
	openBy := map[string]int{}
	total, maxTotal, maxPer := 0, 0, 0
	var served sync.WaitGroup
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			mu.Lock()
			openBy[host]++
			total++
			maxTotal, maxPer = max(maxTotal, total), max(maxPer, openBy[host])
			mu.Unlock()
			served.Go(func() {
				_, _ = io.Copy(io.Discard, c) // until the client closes
				mu.Lock()
				openBy[host]--
				total--
				mu.Unlock()
				c.Close()
			})
		}
	}()

	var clients sync.WaitGroup
	for w := range 8 {
		rng := rand.New(rand.NewPCG(uint64(w), 42))
		clients.Go(func() {
			for range 40 {
				from := net.IPv4(127, 0, 0, byte(2+rng.IntN(5)))
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from}}
				c, err := d.Dial("tcp", lis.Addr().String())
				if err != nil {
					t.Error(err)
					return
				}
				time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
				c.Close()
			}
		})
	}
	clients.Wait()
	l.Close()
	<-accepting // no more served.Go: then wait
	served.Wait()

	refusedPer := testutil.ToFloat64(refused.WithLabelValues(connlimit.PerClient))
	refusedMax := testutil.ToFloat64(refused.WithLabelValues(connlimit.Max))
	t.Logf("320 connections: at most %d open at once, %d from one client; refused %v per client, %v in all", maxTotal, maxPer, refusedPer, refusedMax)
	if maxTotal > 10 || maxPer > 3 {
		t.Errorf("held %d connections at once (limit 10), %d from one client (limit 3)", maxTotal, maxPer)
	}
	if refusedPer+refusedMax == 0 || refusedPer+refusedMax >= 320 {
		t.Errorf("refused %v of 320: the storm did not reach the limits, or nothing was served", refusedPer+refusedMax)
	}
	if n, per := l.Open(); n != 0 || len(per) != 0 {
		t.Errorf("after every client left: %d counted open, per client %v; want none", n, per)
	}
	if g := testutil.ToFloat64(open); g != 0 {
		t.Errorf("the open gauge is %v after every client left, want 0", g)
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestClientOf: IPv4 (and IPv4 written as IPv6) by address, IPv6 by its
// /64 whatever the zone, anything not TCP as no client.
func TestClientOf(t *testing.T) {
	for _, c := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 1}, "192.0.2.7"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 1}, "192.0.2.7"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6"), Port: 1}, "2001:db8:1:2::/64"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::1"), Port: 9, Zone: "eth0"}, "2001:db8:1:2::/64"},
		{&net.TCPAddr{IP: net.IP{1, 2, 3}}, ""},
		{&net.UnixAddr{Name: "/tmp/s", Net: "unix"}, ""},
	} {
		if got := connlimit.ClientOf(c.addr); got != c.want {
			t.Errorf("ClientOf(%v) = %q, want %q", c.addr, got, c.want)
		}
	}
	if got := connlimit.Bucket(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6")}, 128); got != "2001:db8:1:2:3:4:5:6/128" {
		t.Errorf("Bucket /128 = %q", got)
	}
}

// TestConnPassesOnTheSocket: an accepted connection still offers what
// servers look for on a TCP connection (half-close, sendfile, the raw
// socket), and closing it twice gives its place back once.
func TestConnPassesOnTheSocket(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := connlimit.New(lis, connlimit.Limits{PerClient: 2}, connlimit.Options{}).(*connlimit.Listener)
	defer l.Close()
	client, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.(interface{ CloseWrite() error }); !ok {
		t.Error("no CloseWrite")
	}
	if _, ok := c.(io.ReaderFrom); !ok {
		t.Error("no ReadFrom")
	}
	if sc, ok := c.(syscall.Conn); !ok {
		t.Error("no SyscallConn")
	} else if _, err := sc.SyscallConn(); err != nil {
		t.Errorf("SyscallConn: %v", err)
	}
	if n, _ := l.Open(); n != 1 {
		t.Fatalf("%d open, want 1", n)
	}
	c.Close()
	c.Close()
	if n, per := l.Open(); n != 0 || len(per) != 0 {
		t.Errorf("after closing twice: %d open, %v", n, per)
	}
}
