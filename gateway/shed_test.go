package gateway_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/mesh"
)

// TestGatewaySheds: with --shed-gateway, a limit of 2 and no CPU signal
// (--shed-run-queue 0: refuse over the limit), a burst of 200
// reads gets 429 with Retry-After and a RESOURCE_EXHAUSTED body for what
// it cannot serve, and 200 for the rest; clients trickling their bodies
// hold no slot meanwhile (the body is read before admission).
func TestGatewaySheds(t *testing.T) {
	t.Parallel()
	s := startSystem(t, func(c *app.Config) {
		c.Gateway.Shed = true
		c.Server.Shed = mesh.ShedConfig{Enabled: true, MinLimit: 1, MaxLimit: 2, MaxWait: 2 * time.Millisecond, Pushback: 2 * time.Second}
	})
	id, in := signUpREST(t, s)
	tok := in["accessToken"].(string)
	// 8 clients that send headers and then a body byte by byte, slowly.
	var slow sync.WaitGroup
	stop := make(chan struct{})
	for range 8 {
		conn, err := net.Dial("tcp", strings.TrimPrefix(s.anon.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
		slow.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
					_, _ = conn.Write([]byte(" "))
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	// One at a time, everything passes: the tricklers hold nothing.
	for range 5 {
		wantStatus(t, s.anon.do("GET", "/api/v1/users/"+id, "", "Authorization", "Bearer "+tok), http.StatusOK)
	}
	var ok, shed atomic.Int32
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 200}}
	for range 200 {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", s.anon.base+"/api/v1/users/"+id, nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK:
				ok.Add(1)
			case http.StatusTooManyRequests:
				shed.Add(1)
				if ra := resp.Header.Get("Retry-After"); ra == "" || !strings.Contains(string(b), `"code":8`) || !strings.Contains(string(b), "RetryInfo") {
					t.Errorf("429 without Retry-After or RetryInfo: %q %s", ra, b)
				}
			default:
				t.Errorf("status %d %s", resp.StatusCode, b)
			}
		})
	}
	wg.Wait()
	close(stop)
	slow.Wait()
	t.Logf("%d served, %d shed", ok.Load(), shed.Load())
	if shed.Load() == 0 || ok.Load() == 0 {
		t.Errorf("%d served, %d shed: want both", ok.Load(), shed.Load())
	}
}
