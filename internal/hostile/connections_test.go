package hostile

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trellis-mesh/trellis/gateway"
	"github.com/trellis-mesh/trellis/mesh"
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
	held, refused := flood(t, s.http, n, []byte("GET /api/v1/users/x HTTP/1.1\r\nHost: gw\r\n"), func(c net.Conn) bool {
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		switch {
		case err == nil && resp.StatusCode == http.StatusTooManyRequests:
			return false
		case err != nil && isTimeout(err):
			return true // waiting for the rest of its request
		default:
			t.Errorf("connection answered %v, %v; want held or 429", resp, err)
			return false
		}
	})
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

// TestOneClientCannotHoldUnboundedGRPCConnections: one client opens 2 000
// connections to a gRPC port of a `trellis run` as by default, each
// sending a TLS ClientHello and then nothing (no certificate is needed to
// get this far; grpc-go holds such a handshake, ~40 KiB, for its 10 s
// timeout: before the limit, 8 000 of them grew the process by 315 MiB).
// At most mesh.DefaultMaxConnsPerClient get a ServerHello; every other
// one is closed at once, before the handshake. The process grows by a
// few MiB, and a client with a certificate, from another address, is
// served meanwhile.
func TestOneClientCannotHoldUnboundedGRPCConnections(t *testing.T) {
	s := start(t)
	time.Sleep(200 * time.Millisecond)
	base := s.rss(t)
	const n = 2000
	held, closed := flood(t, s.user, n, captureClientHello(), func(c net.Conn) bool {
		got, err := c.Read(make([]byte, 1))
		// A ServerHello: the handshake is under way. Else closed unanswered
		// (EOF, or a reset: the server read nothing).
		return got > 0 || isTimeout(err)
	})
	grew := s.rss(t) - base
	t.Logf("%d handshakes from one client: %d under way, %d closed unanswered; RSS %d MiB, grew %.1f MiB", n, held, closed, base>>20, float64(grew)/(1<<20))
	if held > mesh.DefaultMaxConnsPerClient || held+closed != n {
		t.Errorf("%d under way, %d closed of %d: want at most %d under way and the rest closed", held, closed, n, mesh.DefaultMaxConnsPerClient)
	}
	if grew > 16<<20 {
		t.Errorf("the process grew %.1f MiB under one client's handshakes; the limit bounds them to a few", float64(grew)/(1<<20))
	}
	conn := s.dial(t, s.user) // 127.0.0.1: another client
	if _, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("a client with a certificate during the flood: %v", err)
	}
	s.healthy(t)
}

// flood opens n connections to addr from one client (127.0.0.2), 64 at a
// time, each sending first; held says, within 300 ms, whether the server
// kept the connection. Kept ones stay open until the test ends; it
// returns how many were kept and how many not.
func flood(t *testing.T, addr string, n int, first []byte, held func(net.Conn) bool) (kept, gone int) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			ok := false
			if _, err := c.Write(first); err == nil { // else closed already: refused first
				_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				ok = held(c)
			}
			mu.Lock()
			defer mu.Unlock()
			if ok {
				kept++
				t.Cleanup(func() { c.Close() })
				return
			}
			gone++
			c.Close()
		})
	}
	wg.Wait()
	return kept, gone
}
