package hostile

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRateLimitsHoldUnderAKeySpray runs trellis with its default limits
// behind a "proxy" (--rate-key-header X-Forwarded-For) and has one client
// claim 80 000 different addresses (more than the 65 536 the store keeps): the limiter's store stays bounded
// (least recently seen clients forgotten), the process does not grow past
// the bound, and a client hammering with one address is held to its quota
// throughout — with 429s, never a 5xx.
func TestRateLimitsHoldUnderAKeySpray(t *testing.T) {
	// 20 reads/s: low enough that the hammering client goes over it even
	// on a loaded machine (under make test it manages ~150/s).
	s := start(t, "--rate-read", "20/s", "--rate-write", "50/s", "--rate-auth", "10/m", "--rate-key-header", "X-Forwarded-For")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
	get := func(xff string) int {
		req, _ := http.NewRequest("GET", "http://"+s.http+"/api/v1/users/0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90", nil)
		req.Header.Set("X-Forwarded-For", xff)
		resp, err := client.Do(req)
		if err != nil {
			t.Error(err)
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for range 50 { // warm up
		get("192.0.2.1")
	}
	time.Sleep(200 * time.Millisecond)
	base := s.rss(t)
	stop := make(chan struct{})
	peak := s.peakRSS(t, stop)

	var sprayed, fives atomic.Int64
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 80_000; i += 16 { // more clients than the store keeps (65 536)
				code := get(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255))
				sprayed.Add(1)
				if code >= 500 || code == 0 {
					fives.Add(1)
				}
			}
		}()
	}
	// Meanwhile one address asks as fast as it can: held to 20/s.
	var ok, limited int
	start := time.Now()
	for time.Since(start) < 3*time.Second {
		switch code := get("198.51.100.7"); code {
		case http.StatusUnauthorized: // anonymous: answered, and counted by the limits
			ok++
		case http.StatusTooManyRequests:
			limited++
		default:
			t.Errorf("the hammering client got %d", code)
		}
	}
	wg.Wait()
	close(stop)
	grew := <-peak - base
	t.Logf("%d sprayed requests; hammering client: %d served, %d limited in %v; RSS grew %d MiB", sprayed.Load(), ok, limited, time.Since(start).Round(time.Millisecond), grew>>20)
	if fives.Load() > 0 {
		t.Errorf("%d answers were 5xx or failed", fives.Load())
	}
	if limited == 0 || ok > 20*4+20 { // 3 s at 20/s plus the burst of 20, with a second of slack
		t.Errorf("the hammering client: %d served, %d limited; want it held to its quota", ok, limited)
	}
	if grew > 64<<20 {
		t.Errorf("the process grew %d MiB under a key spray; want < 64 MiB (the store is bounded)", grew>>20)
	}
	s.healthy(t)
}

// TestForgedForwardedForBehindAProxy puts a real reverse proxy
// (net/http/httputil, which appends the address it sees to
// X-Forwarded-For, as nginx's $proxy_add_x_forwarded_for, Envoy and cloud
// load balancers do) in front of trellis with --rate-key-header
// X-Forwarded-For --rate-key-proxies 127.0.0.1 (the proxy's address), and
// clients on their own loopback addresses that write an X-Forwarded-For of
// their own: a new forged address with every request does not give a
// client a new quota, forging another client's address does not spend
// that client's, and a client that skips the proxy is counted by its own
// connection.
func TestForgedForwardedForBehindAProxy(t *testing.T) {
	const quota = 5
	s := start(t, "--rate-read", fmt.Sprintf("%d/m", quota), "--rate-key-header", "X-Forwarded-For", "--rate-key-proxies", "127.0.0.1")
	target, _ := url.Parse("http://" + s.http)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxy := &http.Server{Handler: httputil.NewSingleHostReverseProxy(target), ReadHeaderTimeout: 5 * time.Second}
	go proxy.Serve(ln)
	t.Cleanup(func() { proxy.Close() })

	// from is a client on its own loopback address.
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 10 * time.Second}
	}
	get := func(c *http.Client, addr, xff string) int {
		req, _ := http.NewRequest("GET", "http://"+addr+"/api/v1/users/0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90", nil)
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	count := func(c *http.Client, addr string, n int, xff func(i int) string) (served, limited int) {
		for i := range n {
			switch code := get(c, addr, xff(i)); code {
			case http.StatusUnauthorized: // anonymous: answered, and counted
				served++
			case http.StatusTooManyRequests:
				limited++
			default:
				t.Fatalf("got %d", code)
			}
		}
		return served, limited
	}
	a, b, direct := from("127.0.0.2"), from("127.0.0.3"), from("127.0.0.4")
	proxied := ln.Addr().String()

	served, limited := count(a, proxied, 3*quota, func(i int) string { return fmt.Sprintf("198.51.100.%d", i) })
	if served != quota || limited != 2*quota {
		t.Errorf("a client forging a new X-Forwarded-For each time: %d served, %d limited; want %d and %d", served, limited, quota, 2*quota)
	}
	// Straight to the gateway, naming client b: counted as itself.
	served, limited = count(direct, s.http, 2*quota, func(int) string { return "127.0.0.3" })
	if served != quota || limited != quota {
		t.Errorf("a client skipping the proxy: %d served, %d limited; want %d and %d", served, limited, quota, quota)
	}
	// Client b has its whole quota still.
	if served, limited = count(b, proxied, quota, func(int) string { return "" }); served != quota {
		t.Errorf("client b after others forged its address: %d served, %d limited; want %d served", served, limited, quota)
	}
	s.healthy(t)
}
