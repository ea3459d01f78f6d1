package gateway

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/connlimit"
)

// Connection limits of the gateway's listener (internal/connlimit).
//
// The rate limits count requests, but a connection costs the gateway
// memory whether or not it carries one: net/http keeps a goroutine and
// its buffers for each, for up to the read-header timeout before a
// request and the idle timeout between them, and a 429 leaves the
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

// LimitConnections wraps the gateway's listener with its connection
// limits (Config.Conns); with neither set it returns lis. A connection
// from --rate-key-proxies counts only towards the total; an IPv6 client
// counts by its --rate-ipv6-prefix, as the rate limits count it.
func (g *Gateway) LimitConnections(lis net.Listener) net.Listener {
	lim := g.cfg.Conns
	tooMany := refusal(429, "Too Many Requests", status.Newf(codes.ResourceExhausted,
		"too many connections from this client: at most %d at once; reuse one (keep-alive) or retry after 1 s", lim.PerClient))
	full := refusal(503, "Service Unavailable", status.Newf(codes.Unavailable,
		"the gateway holds its most connections (%d); retry after 1 s", lim.Max))
	return connlimit.New(lis, connlimit.Limits{Max: lim.Max, PerClient: lim.PerClient}, connlimit.Options{
		Key: func(a net.Addr) string {
			ip, ok := connlimit.AddrOf(a)
			if !ok || g.keyer.proxies != nil && g.keyer.trusts(ip.Unmap()) {
				return ""
			}
			return g.keyer.bucket(ip)
		},
		Refuse: func(c net.Conn, reason string) {
			answer := full
			if reason == connlimit.PerClient {
				answer = tooMany
			}
			// A fresh socket's send buffer takes the answer whole; the
			// deadline bounds a peer that shrank its window.
			_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			_, _ = c.Write(answer)
			_ = c.Close()
		},
		Open:    g.metrics.conns,
		Refused: g.metrics.connsRefused,
	})
}

// refusal is a whole HTTP/1.1 answer carrying st in the API's error shape.
func refusal(code int, text string, st *status.Status) []byte {
	body, err := errorJSON.Marshal(st.Proto())
	if err != nil { // a constant message: cannot happen
		body = []byte(`{"code":8,"message":"too many connections"}`)
	}
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s", code, text, len(body), body)
}
