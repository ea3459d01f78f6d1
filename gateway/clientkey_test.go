package gateway

import (
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

func keyer(t testing.TB, c RateLimits) *clientKeyer {
	t.Helper()
	k, err := newClientKeyer(c)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keyOf(k *clientKeyer, peer string, h http.Header) string {
	return k.key(&http.Request{RemoteAddr: peer, Header: h})
}

// TestClientKey: behind proxies that append to X-Forwarded-For or
// Forwarded, the client is read from the right, at the trusted position;
// what a client wrote left of it never names its bucket, and an unusable
// entry there falls back to the connection (the proxy), never to an entry
// the client wrote. IPv6 clients are counted by their /64.
func TestClientKey(t *testing.T) {
	xff := func(v ...string) http.Header { return http.Header{"X-Forwarded-For": v} }
	many := strings.Repeat("198.51.100.1, ", 20_000) + "203.0.113.7"
	trustedTail := "203.0.113.7" + strings.Repeat(", 10.9.9.9", MaxTrustedHops+5)
	for _, tc := range []struct {
		name   string
		c      RateLimits
		peer   string
		header http.Header
		want   string
	}{
		{"no header configured: the connection", RateLimits{}, "192.0.2.1:5000", xff("203.0.113.7"), "192.0.2.1"},
		{"one proxy: the rightmost", RateLimits{KeyHeader: "X-Forwarded-For"}, "10.0.0.1:5000", xff("198.51.100.1, 203.0.113.7"), "203.0.113.7"},
		{"header name in any case", RateLimits{KeyHeader: "x-forwarded-for"}, "10.0.0.1:5000", xff("198.51.100.1,203.0.113.7"), "203.0.113.7"},
		{"two proxies: second from the right", RateLimits{KeyHeader: "X-Forwarded-For", TrustedHops: 2}, "10.0.0.1:5000", xff("198.51.100.1, 203.0.113.7, 10.0.0.2"), "203.0.113.7"},
		{"lines are one list", RateLimits{KeyHeader: "X-Forwarded-For", TrustedHops: 2}, "10.0.0.1:5000", xff("198.51.100.1, 203.0.113.7", "10.0.0.2"), "203.0.113.7"},
		{"a forged line before the proxy's", RateLimits{KeyHeader: "X-Forwarded-For"}, "10.0.0.1:5000", xff("198.51.100.1", "203.0.113.7"), "203.0.113.7"},
		{"fewer entries than proxies: the connection", RateLimits{KeyHeader: "X-Forwarded-For", TrustedHops: 2}, "10.0.0.1:5000", xff("203.0.113.7"), "10.0.0.1"},
		{"junk at the trusted position: the connection, not the valid entry left of it", RateLimits{KeyHeader: "X-Forwarded-For"}, "10.0.0.1:5000", xff("203.0.113.7, not-an-address"), "10.0.0.1"},
		{"no header: the connection", RateLimits{KeyHeader: "X-Forwarded-For"}, "10.0.0.1:5000", nil, "10.0.0.1"},
		{"20 000 entries: the rightmost", RateLimits{KeyHeader: "X-Forwarded-For"}, "10.0.0.1:5000", xff(many), "203.0.113.7"},
		{"an address with a port", RateLimits{KeyHeader: "X-Forwarded-For"}, "10.0.0.1:5000", xff("203.0.113.7:4711"), "203.0.113.7"},
		{"IPv6 by its /64", RateLimits{KeyHeader: "X-Forwarded-For"}, "10.0.0.1:5000", xff("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64"},
		{"IPv6 by a configured /56", RateLimits{KeyHeader: "X-Forwarded-For", IPv6Prefix: 56}, "10.0.0.1:5000", xff("2001:db8:1:2ff:3:4:5:6"), "2001:db8:1:200::/56"},
		{"IPv6 per address", RateLimits{KeyHeader: "X-Forwarded-For", IPv6Prefix: 128}, "10.0.0.1:5000", xff("2001:db8::6"), "2001:db8::6/128"},
		{"IPv4-mapped IPv6 is IPv4", RateLimits{KeyHeader: "X-Forwarded-For"}, "10.0.0.1:5000", xff("::ffff:203.0.113.7"), "203.0.113.7"},
		{"a zone is dropped", RateLimits{KeyHeader: "X-Forwarded-For"}, "10.0.0.1:5000", xff("fe80::1%eth0"), "fe80::/64"},
		{"the connection over IPv6", RateLimits{}, "[2001:db8:5::9]:5000", nil, "2001:db8:5::/64"},
		{"Forwarded", RateLimits{KeyHeader: "Forwarded"}, "10.0.0.1:5000", http.Header{"Forwarded": {`for=198.51.100.1, for="[2001:db8:7::1]:4711";proto=https`}}, "2001:db8:7::/64"},
		{"a one-address header", RateLimits{KeyHeader: "X-Real-IP"}, "10.0.0.1:5000", http.Header{"X-Real-Ip": {"203.0.113.7"}}, "203.0.113.7"},
		{"a one-address header holding a list: the connection", RateLimits{KeyHeader: "X-Real-IP"}, "10.0.0.1:5000", http.Header{"X-Real-Ip": {"198.51.100.1, 203.0.113.7"}}, "10.0.0.1"},
		{"from a trusted proxy: the rightmost outside the proxies", RateLimits{KeyHeader: "X-Forwarded-For", TrustedProxies: []string{"10.0.0.0/8"}}, "10.0.0.1:5000", xff("198.51.100.1, 203.0.113.7, 10.2.2.2"), "203.0.113.7"},
		{"not from a trusted proxy: its own address", RateLimits{KeyHeader: "X-Forwarded-For", TrustedProxies: []string{"10.0.0.0/8"}}, "192.0.2.9:5000", xff("203.0.113.7"), "192.0.2.9"},
		{"nothing but proxies within the bound: the connection", RateLimits{KeyHeader: "X-Forwarded-For", TrustedProxies: []string{"10.0.0.0/8"}}, "10.0.0.1:5000", xff(trustedTail), "10.0.0.1"},
		{"a one-address header from a trusted proxy", RateLimits{KeyHeader: "X-Real-IP", TrustedProxies: []string{"10.0.0.0/8"}}, "10.0.0.1:5000", http.Header{"X-Real-Ip": {"203.0.113.7"}}, "203.0.113.7"},
		{"a one-address header from elsewhere: its own address", RateLimits{KeyHeader: "X-Real-IP", TrustedProxies: []string{"10.0.0.0/8"}}, "192.0.2.9:5000", http.Header{"X-Real-Ip": {"203.0.113.7"}}, "192.0.2.9"},
		{"a peer that is no address", RateLimits{KeyHeader: "X-Forwarded-For"}, "@", xff("junk"), "@"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := keyOf(keyer(t, tc.c), tc.peer, tc.header); got != tc.want {
				t.Errorf("key %q, want %q", got, tc.want)
			}
		})
	}
}

// TestClientKeyCostIsBounded: a 64 KiB X-Forwarded-For (what the server's
// header limit lets through) costs about what one of MaxTrustedHops
// entries does (~110 allocations; parsed whole, ~25 000): only the
// trailing entries are parsed.
func TestClientKeyCostIsBounded(t *testing.T) {
	k := keyer(t, RateLimits{KeyHeader: "X-Forwarded-For", TrustedProxies: []string{"10.0.0.0/8"}})
	huge := http.Header{"X-Forwarded-For": {strings.Repeat("1.2.3.4,", 64<<10/8-2) + "203.0.113.7"}}
	short := http.Header{"X-Forwarded-For": {"1.2.3.4, 203.0.113.7"}}
	r := func(h http.Header) *http.Request { return &http.Request{RemoteAddr: "10.0.0.1:1", Header: h} }
	a, b := testing.AllocsPerRun(50, func() { k.key(r(huge)) }), testing.AllocsPerRun(50, func() { k.key(r(short)) })
	if a > 400 {
		t.Errorf("a 64 KiB header: %.0f allocations per key, a short one %.0f", a, b)
	}
}

// FuzzClientKey: whatever a client writes left of the entries its proxies
// append, its key does not change; and a key is always an IPv4 address,
// an IPv6 prefix of the configured length, or the connection's address.
// Run longer with: go test -fuzz FuzzClientKey ./gateway
func FuzzClientKey(f *testing.F) {
	for _, s := range [][3]string{
		{"198.51.100.1", "203.0.113.7", "10.0.0.2"},
		{"", "2001:db8::1", "10.0.0.2"},
		{"a, b, c, ", "junk", ""},
		{strings.Repeat("1.2.3.4,", 100), "[2001:db8::1]:80", "::ffff:10.0.0.1"},
		{`for="[::1]"`, "fe80::1%25eth0", "1.1.1.1:99"},
		{"\x00,\xff", " 203.0.113.7 ", ","},
	} {
		for hops := uint8(1); hops <= 2; hops++ {
			f.Add(s[0], s[1], s[2], hops, false)
			f.Add(s[0], s[1], s[2], hops, true)
		}
	}
	k := map[[2]int]*clientKeyer{}
	for hops := 1; hops <= 2; hops++ {
		for v6, bits := range []int{64, 128} {
			k[[2]int{hops, v6}] = keyer(f, RateLimits{KeyHeader: "X-Forwarded-For", TrustedHops: hops, IPv6Prefix: bits})
		}
	}
	const peer = "10.0.0.1:5000"
	f.Fuzz(func(t *testing.T, forged, client, proxy string, hops uint8, perAddress bool) {
		h := int(hops%2) + 1
		v6 := 0
		if perAddress {
			v6 = 1
		}
		kr := k[[2]int{h, v6}]
		// What the proxies append: h entries, none with a comma.
		tail := []string{strings.ReplaceAll(client, ",", "")}
		if h == 2 {
			tail = append(tail, strings.ReplaceAll(proxy, ",", ""))
		}
		trusted := strings.Join(tail, ", ")
		want := keyOf(kr, peer, http.Header{"X-Forwarded-For": {trusted}})
		for _, hdr := range []http.Header{
			{"X-Forwarded-For": {forged + ", " + trusted}},
			{"X-Forwarded-For": {forged, trusted}},
			{"X-Forwarded-For": {forged + "," + forged, "", trusted}},
		} {
			if got := keyOf(kr, peer, hdr); got != want {
				t.Fatalf("forged %q changed the key: %q, want %q (header %q)", forged, got, want, hdr)
			}
			// Reading only the trailing entries gives what the whole header would.
			if whole, cut := kr.strategy.ClientIP(hdr, peer), kr.strategy.ClientIP(kr.trailing(hdr), peer); whole != cut {
				t.Fatalf("header %q: the whole of it names %q, its trailing entries %q", hdr, whole, cut)
			}
		}
		if want == "10.0.0.1" {
			return
		}
		if a, err := netip.ParseAddr(want); err == nil && a.Is4() {
			return
		}
		p, err := netip.ParsePrefix(want)
		if err != nil || !p.Addr().Is6() || p.Bits() != kr.v6bits || p.Masked() != p {
			t.Fatalf("key %q is neither an IPv4 address, an IPv6 /%d nor the connection (entries %q)", want, kr.v6bits, trusted)
		}
	})
}

// TestClientKeySettings: settings that cannot work are refused at start,
// naming the flag; the flags parse lists and refuse what is no address.
func TestClientKeySettings(t *testing.T) {
	for _, tc := range []struct {
		c    RateLimits
		want string // in the error; "" accepted
	}{
		{RateLimits{}, ""},
		{RateLimits{KeyHeader: "X-Forwarded-For", TrustedHops: MaxTrustedHops}, ""},
		{RateLimits{KeyHeader: "Forwarded", TrustedProxies: []string{"10.0.0.0/8", "2001:db8::/32", "192.0.2.1"}}, ""},
		{RateLimits{KeyHeader: "X-Real-IP", IPv6Prefix: 128}, ""},
		{RateLimits{KeyHeader: "X-Real-IP", TrustedProxies: []string{"10.0.0.0/8"}}, ""},
		{RateLimits{KeyHeader: "X Forwarded"}, "--rate-key-header"},
		{RateLimits{KeyHeader: "X-Forwarded-For:"}, "--rate-key-header"},
		{RateLimits{KeyHeader: "X-Forwarded-For", TrustedHops: -1}, "--rate-key-hops"},
		{RateLimits{KeyHeader: "X-Forwarded-For", TrustedHops: MaxTrustedHops + 1}, "--rate-key-hops"},
		{RateLimits{KeyHeader: "X-Real-IP", TrustedHops: 2}, "--rate-key-hops"},
		{RateLimits{TrustedHops: 2}, "--rate-key-hops"},
		{RateLimits{TrustedProxies: []string{"10.0.0.0/8"}}, "--rate-key-proxies needs --rate-key-header"},
		{RateLimits{KeyHeader: "X-Forwarded-For", TrustedHops: 2, TrustedProxies: []string{"10.0.0.0/8"}}, "set one"},
		{RateLimits{KeyHeader: "X-Forwarded-For", TrustedProxies: []string{"10.0.0.0/33"}}, "--rate-key-proxies"},
		{RateLimits{KeyHeader: "X-Forwarded-For", TrustedProxies: []string{"fe80::1%eth0"}}, "--rate-key-proxies"},
		{RateLimits{IPv6Prefix: 31}, "--rate-ipv6-prefix"},
		{RateLimits{IPv6Prefix: 129}, "--rate-ipv6-prefix"},
		{RateLimits{IPv6Prefix: -64}, "--rate-ipv6-prefix"},
	} {
		err := tc.c.Validate()
		if _, nerr := newClientKeyer(tc.c); (err == nil) != (nerr == nil) {
			t.Errorf("%+v: Validate says %v, newClientKeyer %v", tc.c, err, nerr)
		}
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v refused: %v", tc.c, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: error %v, want one naming %q", tc.c, err, tc.want)
		}
	}
	parse := func(args ...string) (RateLimits, error) {
		var c RateLimits
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(new(strings.Builder))
		c.RegisterFlags("", fs)
		return c, fs.Parse(args)
	}
	c, err := parse()
	if err != nil || c.TrustedHops != 1 || c.IPv6Prefix != DefaultIPv6Prefix || c.TrustedProxies != nil || c.Validate() != nil {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	c, err = parse("--rate-key-header", "X-Forwarded-For", "--rate-key-proxies", " 10.0.0.0/8, ,192.0.2.1 ")
	if err != nil || fmt.Sprint(c.TrustedProxies) != "[10.0.0.0/8 192.0.2.1]" || c.Validate() != nil {
		t.Errorf("proxies: %q, %v", c.TrustedProxies, err)
	}
	for _, bad := range []string{"10.0.0.0/33", "not-an-address", "fe80::1%eth0", "10.0.0.0/8;rm"} {
		if _, err := parse("--rate-key-proxies", bad); err == nil {
			t.Errorf("--rate-key-proxies %q accepted", bad)
		}
	}
}

// BenchmarkClientKey: what naming an anonymous client costs a request.
func BenchmarkClientKey(b *testing.B) {
	for _, bc := range []struct {
		name string
		c    RateLimits
		peer string
		h    http.Header
	}{
		{"connection", RateLimits{}, "203.0.113.7:5000", nil},
		{"connection-ipv6", RateLimits{}, "[2001:db8:1:2::7]:5000", nil},
		{"xff-hops", RateLimits{KeyHeader: "X-Forwarded-For"}, "10.0.0.1:5000", http.Header{"X-Forwarded-For": {"198.51.100.1, 203.0.113.7"}}},
		{"xff-proxies", RateLimits{KeyHeader: "X-Forwarded-For", TrustedProxies: []string{"10.0.0.0/8"}}, "10.0.0.1:5000", http.Header{"X-Forwarded-For": {"198.51.100.1, 203.0.113.7, 10.0.0.2"}}},
	} {
		k := keyer(b, bc.c)
		r := &http.Request{RemoteAddr: bc.peer, Header: bc.h}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				k.key(r)
			}
		})
	}
}
