// Package connlimit bounds the connections a listener holds open, per
// client address and in all, before any byte of them is read: what the
// gateway's HTTP port and every mesh gRPC port put in front of their
// servers.
//
// A connection costs its server memory whether or not it carries a
// request — net/http keeps a goroutine and buffers for it until its
// read-header timeout, grpc-go a goroutine and the TLS state of a
// handshake until its connection timeout — and nothing else counts
// connections: rate limits and load shedding count requests. Measured
// against `trellis run` before these limits: 10 000 connections from one
// client to the gateway, each holding half a request, +107 MiB; 8 000 to
// a gRPC port, each having sent a TLS ClientHello and no certificate,
// +315 MiB. Only the file-descriptor limit stopped more.
package connlimit

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a connection is refused (the refused counter's label).
const (
	PerClient = "per_client" // over Limits.PerClient
	Max       = "max"        // over Limits.Max
)

// Limits bound the connections open at once.
type Limits struct {
	// Max is the connections open at once; 0: no limit.
	Max int
	// PerClient is the connections open at once from one client (Key);
	// 0: no limit.
	PerClient int
}

// Options say who a connection's client is and how a refusal is made.
type Options struct {
	// Key names the client a connection counts under for PerClient; ""
	// counts it only towards Max (a trusted proxy). Nil: ClientOf.
	Key func(net.Addr) string
	// Refuse answers a connection over a limit (reason PerClient or Max)
	// and closes it. Nil: closed at once.
	Refuse func(c net.Conn, reason string)
	// Open, when set, follows the connections open; Refused, when set,
	// counts refusals by reason.
	Open    prometheus.Gauge
	Refused *prometheus.CounterVec
}

// Listener applies Limits to the connections it accepts.
type Listener struct {
	net.Listener
	lim Limits
	opt Options

	mu       sync.Mutex
	n        int
	byClient map[string]int // only clients with connections open
}

// New wraps lis; with neither limit set it returns lis itself.
func New(lis net.Listener, lim Limits, opt Options) net.Listener {
	if lim.Max <= 0 && lim.PerClient <= 0 {
		return lis
	}
	if opt.Key == nil {
		opt.Key = ClientOf
	}
	if opt.Refuse == nil {
		opt.Refuse = func(c net.Conn, _ string) { _ = c.Close() }
	}
	if opt.Refused != nil {
		opt.Refused.WithLabelValues(PerClient)
		opt.Refused.WithLabelValues(Max)
	}
	return &Listener{Listener: lis, lim: lim, opt: opt, byClient: map[string]int{}}
}

// ClientOf is a connection's client: its IP address, or for IPv6 its /64
// (the block one subscriber, host or VM is usually given: per address,
// one machine would be 2^64 clients); "" for an address that is not IP.
func ClientOf(a net.Addr) string {
	return Bucket(a, 64)
}

// Bucket is ClientOf with the IPv6 prefix length v6bits.
func Bucket(a net.Addr, v6bits int) string {
	ip, ok := AddrOf(a)
	if !ok {
		return ""
	}
	return BucketAddr(ip, v6bits)
}

// AddrOf is a TCP address's IP address; false for any other address.
func AddrOf(a net.Addr) (netip.Addr, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	return netip.AddrFromSlice(ta.IP)
}

// BucketAddr is the client an address is: IPv4 as itself (an
// IPv4-mapped IPv6 address too), IPv6 as its prefix of v6bits, without a
// zone. The gateway's rate limits count clients the same way.
func BucketAddr(a netip.Addr, v6bits int) string {
	a = a.WithZone("").Unmap()
	if a.Is4() {
		return a.String()
	}
	p, err := a.Prefix(v6bits)
	if err != nil {
		return a.String()
	}
	return p.String()
}

// Accept returns the next connection within the limits; one over them is
// refused (Options.Refuse) here, and counted.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := ""
		if l.lim.PerClient > 0 {
			key = l.opt.Key(c.RemoteAddr())
		}
		reason := l.take(key)
		if reason == "" {
			return &conn{Conn: c, l: l, key: key}, nil
		}
		if l.opt.Refused != nil {
			l.opt.Refused.WithLabelValues(reason).Inc()
		}
		l.opt.Refuse(c, reason)
	}
}

// take counts a new connection of key, or says which limit it is over.
func (l *Listener) take(key string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim.Max > 0 && l.n >= l.lim.Max {
		return Max
	}
	if key != "" {
		if l.byClient[key] >= l.lim.PerClient {
			return PerClient
		}
		l.byClient[key]++
	}
	l.n++
	l.set()
	return ""
}

func (l *Listener) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if key != "" {
		if l.byClient[key] <= 1 {
			delete(l.byClient, key)
		} else {
			l.byClient[key]--
		}
	}
	l.set()
}

func (l *Listener) set() {
	if l.opt.Open != nil {
		l.opt.Open.Set(float64(l.n))
	}
}

// Open is the connections counted open, in all and per client (tests).
func (l *Listener) Open() (int, map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	per := make(map[string]int, len(l.byClient))
	for k, v := range l.byClient {
		per[k] = v
	}
	return l.n, per
}

// conn gives its place back when closed (once: servers may close a
// connection twice).
type conn struct {
	net.Conn
	l    *Listener
	key  string
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}

// CloseWrite passes on the TCP half-close net/http uses to let a client
// read an error answer before the connection goes (the wrapper would
// otherwise hide it).
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ReadFrom passes on the TCP connection's sendfile/splice path.
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// SyscallConn passes on the socket, for what sets its options through it
// (grpc-go's channelz, keep-alive settings).
func (c *conn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("connlimit: not a socket")
}
