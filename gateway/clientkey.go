package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/realclientip/realclientip-go"

	"github.com/trellis-mesh/trellis/internal/connlimit"
)

// Who a request's client is, for the rate limits, when no principal says.
//
// Behind a proxy the connection's address is the proxy's, so the client's
// address has to come from a header the proxy sets. X-Forwarded-For and
// Forwarded (RFC 7239) are lists each proxy *appends* to: every address
// left of the ones the trusted proxies wrote is whatever the client sent,
// so the client is read from the right (realclientip-go's rightmost-trusted
// strategies, the reference implementation of how to read these headers
// safely), never from the left: a client that could name its own address
// could take a fresh quota with every request.

// Bounds of the client-key settings.
const (
	// MaxTrustedHops bounds --rate-key-hops, and how many of a forwarding
	// header's trailing entries are read at all (a header of 64 KiB holds
	// tens of thousands).
	MaxTrustedHops = 32
	// DefaultIPv6Prefix: an IPv6 client is counted by its /64, the block
	// one subscriber, host or VM is usually given (RFC 6177): per address,
	// one machine would hold 2^64 quotas.
	DefaultIPv6Prefix = 64
	minIPv6Prefix     = 32
)

const (
	xForwardedFor = "X-Forwarded-For"
	forwarded     = "Forwarded"
)

// clientKeyer names the client of an anonymous request.
type clientKeyer struct {
	header   string                // canonical; "" reads the connection only
	list     bool                  // header is X-Forwarded-For or Forwarded
	proxies  []net.IPNet           // when set: who may set the header
	strategy realclientip.Strategy // reads the header
	v6bits   int
}

func newClientKeyer(c RateLimits) (*clientKeyer, error) {
	k := &clientKeyer{header: http.CanonicalHeaderKey(c.KeyHeader), v6bits: c.IPv6Prefix}
	hops := max(c.TrustedHops, 1) // 0: the default, one proxy
	if k.v6bits == 0 {
		k.v6bits = DefaultIPv6Prefix
	}
	if err := c.validateKey(); err != nil {
		return nil, err
	}
	if k.header == "" {
		return k, nil
	}
	k.list = k.header == xForwardedFor || k.header == forwarded
	var err error
	if len(c.TrustedProxies) > 0 {
		if k.proxies, err = realclientip.AddressesAndRangesToIPNets(c.TrustedProxies...); err != nil {
			return nil, err
		}
	}
	switch {
	case !k.list: // one address, set by the proxy (trusted only from the proxies, when they are named)
		k.strategy, err = realclientip.NewSingleIPHeaderStrategy(k.header)
	case k.proxies != nil:
		k.strategy, err = realclientip.NewRightmostTrustedRangeStrategy(k.header, k.proxies)
	default:
		k.strategy, err = realclientip.NewRightmostTrustedCountStrategy(k.header, hops)
	}
	return k, err
}

// validateKey reports client-key settings that cannot work.
func (c *RateLimits) validateKey() error {
	h := http.CanonicalHeaderKey(c.KeyHeader)
	list := h == xForwardedFor || h == forwarded
	switch {
	case c.KeyHeader != "" && strings.ContainsAny(c.KeyHeader, " :\r\n\t"):
		return errors.New("--rate-key-header is not a header name")
	case c.TrustedHops < 0 || c.TrustedHops > MaxTrustedHops:
		return fmt.Errorf("--rate-key-hops is %d; it counts the proxies in front of the gateway, 1 to %d", c.TrustedHops, MaxTrustedHops)
	case c.TrustedHops > 1 && !list:
		return errors.New("--rate-key-hops over 1 needs --rate-key-header X-Forwarded-For or Forwarded, the headers proxies append to")
	case len(c.TrustedProxies) > 0 && c.KeyHeader == "":
		return errors.New("--rate-key-proxies needs --rate-key-header: the header those proxies set")
	case len(c.TrustedProxies) > 0 && c.TrustedHops > 1:
		return errors.New("--rate-key-proxies and --rate-key-hops both say which entries are the proxies'; set one")
	case c.IPv6Prefix != 0 && (c.IPv6Prefix < minIPv6Prefix || c.IPv6Prefix > 128):
		return fmt.Errorf("--rate-ipv6-prefix is %d; want %d to 128", c.IPv6Prefix, minIPv6Prefix)
	}
	if _, err := realclientip.AddressesAndRangesToIPNets(c.TrustedProxies...); err != nil {
		return fmt.Errorf("--rate-key-proxies: %w", err)
	}
	return nil
}

// key is the client's address, or for IPv6 its prefix: from the header
// when the settings trust it and it holds a usable address at the trusted
// position, else the connection's.
func (k *clientKeyer) key(r *http.Request) string {
	peer := addrOf(hostOf(r.RemoteAddr))
	if k.strategy != nil && (k.proxies == nil || !peer.IsValid() || k.trusts(peer)) {
		if a := addrOf(k.strategy.ClientIP(k.trailing(r.Header), r.RemoteAddr)); a.IsValid() {
			return k.bucket(a)
		}
	}
	if peer.IsValid() {
		return k.bucket(peer)
	}
	return r.RemoteAddr
}

// trusts reports whether a connection comes from one of the proxies.
func (k *clientKeyer) trusts(a netip.Addr) bool {
	ip := net.IP(a.AsSlice())
	for _, n := range k.proxies {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// trailing is the request's header with only the entries the strategy
// can use: a list header's last MaxTrustedHops entries (the strategies
// read from the right, and parsing all of a hostile 64 KiB header would
// cost a request thousands of allocations).
func (k *clientKeyer) trailing(h http.Header) http.Header {
	if !k.list {
		return h
	}
	vs := h[k.header]
	var items []string
	for i := len(vs) - 1; i >= 0 && len(items) < MaxTrustedHops; i-- {
		v := vs[i]
		for len(items) < MaxTrustedHops {
			j := strings.LastIndexByte(v, ',')
			items = append(items, v[j+1:])
			if j < 0 {
				break
			}
			v = v[:j]
		}
	}
	for i, j := 0, len(items)-1; i < j; i, j = i+1, j-1 {
		items[i], items[j] = items[j], items[i]
	}
	return http.Header{k.header: {strings.Join(items, ",")}}
}

// bucket is the key of an address: IPv4 as itself (an IPv4-mapped IPv6
// address too), IPv6 as its prefix, without a zone — as the connection
// limits count it.
func (k *clientKeyer) bucket(a netip.Addr) string { return connlimit.BucketAddr(a, k.v6bits) }

func hostOf(remoteAddr string) string {
	if host, _, err := net.SplitHostPort(remoteAddr); err == nil {
		return host
	}
	return remoteAddr
}

func addrOf(s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return a
}
