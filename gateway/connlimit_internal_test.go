package gateway

import (
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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
	keyer, err := newClientKeyer(RateLimits{})
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{cfg: Config{Conns: ConnLimits{Max: 10, PerClient: 3}}, keyer: keyer, metrics: newHTTPMetrics(prometheus.NewRegistry())}
	l := g.LimitConnections(lis).(*connListener)

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

	refusedPer := testutil.ToFloat64(g.metrics.connsRefused.WithLabelValues("per_client"))
	refusedMax := testutil.ToFloat64(g.metrics.connsRefused.WithLabelValues("max"))
	t.Logf("320 connections: at most %d open at once, %d from one client; refused %v per client, %v in all", maxTotal, maxPer, refusedPer, refusedMax)
	if maxTotal > 10 || maxPer > 3 {
		t.Errorf("held %d connections at once (limit 10), %d from one client (limit 3)", maxTotal, maxPer)
	}
	if refusedPer+refusedMax == 0 || refusedPer+refusedMax >= 320 {
		t.Errorf("refused %v of 320: the storm did not reach the limits, or nothing was served", refusedPer+refusedMax)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n != 0 || len(l.byClient) != 0 {
		t.Errorf("after every client left: %d counted open, per client %v; want none", l.n, l.byClient)
	}
	if g := testutil.ToFloat64(g.metrics.conns); g != 0 {
		t.Errorf("trellis_gateway_connections %v after every client left, want 0", g)
	}
}
