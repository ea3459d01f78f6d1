package gateway

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Connection limits of the gateway's listener.
//
// The rate limits count requests, but a connection costs the gateway
// memory whether or not it carries one: net/http keeps a goroutine and
// its buffers for each, for up to --http's read-header timeout before a
// request and its idle timeout between them, and a 429 leaves the
// connection open. Measured: 10 000 connections from one client, each
// holding half a request, grew `trellis run` by 107 MiB (~11 KiB each),
// and nothing but the file-descriptor limit stopped more. So the
// listener counts connections, per client address and in all, and
// answers one over either limit at once — 429 (per client) or 503 (in
// all), in the API's error shape, "Connection: close" — and closes it
// before net/http spends anything on it.
type ConnLimits struct {
	// Max is the connections open at once; 0: no limit.
	Max int
	// PerClient is the connections open at once from one client address
	// (an IPv6 client: its --rate-ipv6-prefix); connections from
	// --rate-key-proxies count only towards Max. 0: no limit.
	PerClient int
}

// Defaults of the connection limits: PerClient is far above what
// browsers open (six per origin) and lets a NAT of many users through;
// together they bound what connections can cost to ~110 MiB, and one
// client to ~3 MiB.
const (
	DefaultMaxConns          = 10_000
	DefaultMaxConnsPerClient = 256
)

// RegisterFlags defines http-max-conns and http-max-conns-per-client,
// prefixed.
func (c *ConnLimits) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.IntVar(&c.Max, prefix+"http-max-conns", DefaultMaxConns, "connections the gateway keeps open at once; over it a new one is answered 503 and closed (0: no limit)")
	fs.IntVar(&c.PerClient, prefix+"http-max-conns-per-client", DefaultMaxConnsPerClient, "connections the gateway keeps open at once from one client address (IPv6: its --rate-ipv6-prefix; --rate-key-proxies are exempt); over it a new one is answered 429 and closed (0: no limit)")
}

// Validate reports limits that cannot work.
func (c *ConnLimits) Validate() error {
	if c.Max < 0 || c.PerClient < 0 {
		return errors.New("--http-max-conns and --http-max-conns-per-client must not be negative (0: no limit)")
	}
	return nil
}

// connListener applies ConnLimits to the connections it accepts.
type connListener struct {
	net.Listener
	lim     ConnLimits
	keyer   *clientKeyer
	refused *prometheus.CounterVec
	open    prometheus.Gauge
	// answers are the refusals, written whole.
	tooMany, full []byte

	mu       sync.Mutex
	n        int
	byClient map[string]int
}

// LimitConnections wraps the gateway's listener with its connection
// limits (Config.Conns); with neither set it returns lis.
func (g *Gateway) LimitConnections(lis net.Listener) net.Listener {
	lim := g.cfg.Conns
	if lim.Max == 0 && lim.PerClient == 0 {
		return lis
	}
	l := &connListener{Listener: lis, lim: lim, keyer: g.keyer, refused: g.metrics.connsRefused, open: g.metrics.conns, byClient: map[string]int{}}
	l.tooMany = refusal(429, "Too Many Requests", status.Newf(codes.ResourceExhausted,
		"too many connections from this client: at most %d at once; reuse one (keep-alive) or retry after 1 s", lim.PerClient))
	l.full = refusal(503, "Service Unavailable", status.Newf(codes.Unavailable,
		"the gateway holds its most connections (%d); retry after 1 s", lim.Max))
	return l
}

// refusal is a whole HTTP/1.1 answer carrying st in the API's error shape.
func refusal(code int, text string, st *status.Status) []byte {
	body, err := errorJSON.Marshal(st.Proto())
	if err != nil { // a constant message: cannot happen
		body = []byte(`{"code":8,"message":"too many connections"}`)
	}
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s", code, text, len(body), body)
}

// Accept returns the next connection within the limits; one over them is
// answered and closed here, and counted
// (trellis_gateway_connections_refused_total).
func (l *connListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := l.clientOf(c.RemoteAddr())
		switch l.take(key) {
		case "":
			return &limitedConn{Conn: c, l: l, key: key}, nil
		case "per_client":
			l.refuse(c, "per_client", l.tooMany)
		default:
			l.refuse(c, "max", l.full)
		}
	}
}

// clientOf is the key a connection counts under for PerClient ("" when it
// does not: a trusted proxy, or an address that is not IP).
func (l *connListener) clientOf(a net.Addr) string {
	if l.lim.PerClient == 0 {
		return ""
	}
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return ""
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return ""
	}
	if l.keyer.proxies != nil && l.keyer.trusts(ip.Unmap()) {
		return ""
	}
	return l.keyer.bucket(ip)
}

// take counts a new connection of key, or says which limit it is over.
func (l *connListener) take(key string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim.Max > 0 && l.n >= l.lim.Max {
		return "max"
	}
	if key != "" {
		if l.byClient[key] >= l.lim.PerClient {
			return "per_client"
		}
		l.byClient[key]++
	}
	l.n++
	l.open.Set(float64(l.n))
	return ""
}

func (l *connListener) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if key != "" {
		if l.byClient[key] <= 1 {
			delete(l.byClient, key) // the map holds only clients with connections open
		} else {
			l.byClient[key]--
		}
	}
	l.open.Set(float64(l.n))
}

// refuse writes the answer (a fresh socket's send buffer takes it whole;
// the deadline bounds a peer that shrank its window) and closes.
func (l *connListener) refuse(c net.Conn, reason string, answer []byte) {
	l.refused.WithLabelValues(reason).Inc()
	_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.Write(answer)
	_ = c.Close()
}

// limitedConn gives its place back when closed (once: net/http may close
// a connection twice).
type limitedConn struct {
	net.Conn
	l    *connListener
	key  string
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}

// CloseWrite passes on the TCP half-close net/http uses to let a client
// read an error answer before the connection goes (the wrapper would
// otherwise hide it).
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ReadFrom passes on the TCP connection's sendfile/splice path.
func (c *limitedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}
