package gateway_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/gateway"
	"github.com/trellis-mesh/trellis/internal/app"
)

// dialFrom opens a connection to addr from the loopback address from.
func dialFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// health asks GET /health on c and returns the answer (the connection
// stays open: keep-alive).
func health(t *testing.T, c net.Conn, r *bufio.Reader) *http.Response {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return answer(t, r)
}

func answer(t *testing.T, r *bufio.Reader) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	return resp
}

// refused checks that c was answered code with the API's error shape and
// closed, without being asked anything.
func refused(t *testing.T, c net.Conn, code, grpcCode int) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	resp := answer(t, r)
	var body struct {
		Code    int
		Message string
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("refusal body: %v", err)
	}
	if resp.StatusCode != code || body.Code != grpcCode || resp.Header.Get("Retry-After") != "1" || !resp.Close || body.Message == "" {
		t.Errorf("refusal: %d %+v Retry-After %q close %v; want %d, code %d, Retry-After 1, Connection: close", resp.StatusCode, body, resp.Header.Get("Retry-After"), resp.Close, code, grpcCode)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		t.Errorf("after the refusal: %v, want the connection closed", err)
	}
}

// TestConnectionLimits: a client holding --http-max-conns-per-client
// connections gets its next one answered 429 and closed, at once, while
// other clients are served; a closed connection gives its place back; and
// past --http-max-conns every new connection is answered 503. A trusted
// proxy (--rate-key-proxies) counts only towards the total.
func TestConnectionLimits(t *testing.T) {
	t.Parallel()
	s := startSystem(t, func(c *app.Config) {
		c.Gateway.Conns = gateway.ConnLimits{Max: 6, PerClient: 2}
		c.Gateway.Limits.KeyHeader, c.Gateway.Limits.TrustedProxies = "X-Forwarded-For", []string{"127.0.0.7"}
	})
	addr := s.gw.Addr(app.TargetGateway)
	open := map[string]net.Conn{}
	serve := func(name, from string) {
		t.Helper()
		c := dialFrom(t, from, addr)
		if resp := health(t, c, bufio.NewReader(c)); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s from %s: %d, want served", name, from, resp.StatusCode)
		}
		open[name] = c
	}
	serve("a1", "127.0.0.2")
	serve("a2", "127.0.0.2")
	refused(t, dialFrom(t, "127.0.0.2", addr), http.StatusTooManyRequests, 8)
	serve("b1", "127.0.0.3") // another client is not affected

	// Closing one gives its place back, once the server has seen it go.
	open["a1"].Close()
	admitted := func(from string) (net.Conn, bool) {
		c := dialFrom(t, from, addr)
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			return nil, false // a refusal came unasked
		}
		return c, true
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, ok := admitted("127.0.0.2"); ok {
			if resp := health(t, c, bufio.NewReader(c)); resp.StatusCode != http.StatusOK {
				t.Fatalf("a3: %d, want served", resp.StatusCode)
			}
			open["a3"] = c
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed connection did not give its place back")
		}
	}
	// The proxy's connections count towards the total only: with a2, b1
	// and a3 open, three more from the proxy reach --http-max-conns (6).
	serve("p1", "127.0.0.7")
	serve("p2", "127.0.0.7")
	serve("p3", "127.0.0.7")
	refused(t, dialFrom(t, "127.0.0.4", addr), http.StatusServiceUnavailable, 14)
	refused(t, dialFrom(t, "127.0.0.7", addr), http.StatusServiceUnavailable, 14)

	for reason, want := range map[string]float64{"per_client": 1, "max": 2} {
		n := gathered(t, s.gw.Registry(), "trellis_gateway_connections_refused_total", "reason", reason)
		if n < want || reason == "max" && n != want {
			t.Errorf("connections refused for %s: %v, want %v", reason, n, want)
		}
	}
	if n := gathered(t, s.gw.Registry(), "trellis_gateway_connections", "", ""); n != 6 {
		t.Errorf("trellis_gateway_connections %v, want 6", n)
	}
}

// gathered is the value of the series of name with label=value (or the
// unlabelled one) in reg.
func gathered(t *testing.T, reg prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if label == "" || l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
			if label == "" {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no series %s{%s=%q}", name, label, value)
	return 0
}
