package hostile

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/gateway"
)

// TestOneClientCannotHoldUnboundedConnections: one client opens 2 000
// connections to the gateway of a `trellis run` as by default, each
// holding half a request (net/http keeps such a connection, a goroutine
// and its buffers, for its 15 s read-header timeout; before the limit,
// 10 000 of them grew the process by 107 MiB). At most
// DefaultMaxConnsPerClient are kept; every other one is answered 429 at
// once and closed. The process grows by a few MiB, and another client is
// served meanwhile.
func TestOneClientCannotHoldUnboundedConnections(t *testing.T) {
	s := start(t)
	time.Sleep(200 * time.Millisecond)
	base := s.rss(t)
	const n = 2000
	var mu sync.Mutex
	held, refused := 0, 0
	var conns []net.Conn
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
			c, err := d.Dial("tcp", s.http)
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := io.WriteString(c, "GET /api/v1/users/x HTTP/1.1\r\nHost: gw\r\n"); err != nil {
				c.Close()
				mu.Lock()
				refused++ // closed already: the refusal came first
				mu.Unlock()
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && resp.StatusCode == http.StatusTooManyRequests:
				refused++
				c.Close()
			case err != nil && isTimeout(err):
				held++ // waiting for the rest of its request
				conns = append(conns, c)
			default:
				t.Errorf("connection answered %v, %v; want held or 429", resp, err)
				c.Close()
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	grew := s.rss(t) - base
	t.Logf("%d connections from one client: %d held, %d refused 429; RSS %d MiB, grew %.1f MiB", n, held, refused, base>>20, float64(grew)/(1<<20))
	if held > gateway.DefaultMaxConnsPerClient || held+refused != n {
		t.Errorf("%d held, %d refused of %d: want at most %d held and the rest refused", held, refused, n, gateway.DefaultMaxConnsPerClient)
	}
	if grew > 16<<20 {
		t.Errorf("the process grew %.1f MiB under one client's connections; the limit bounds them to a few", float64(grew)/(1<<20))
	}
	// Another client is served.
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}}).Dial("tcp", s.http)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("another client during the flood: %v, %v", resp, err)
	}
	s.healthy(t)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
