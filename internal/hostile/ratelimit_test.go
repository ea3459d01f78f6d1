package hostile

import (
	"fmt"
	"io"
	"net/http"
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
