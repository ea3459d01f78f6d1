package hostile

import (
	"bytes"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/trellis-mesh/trellis/mesh/identity"
)

// handshakeClasses are what a client can send to a gRPC port instead of a
// proper mTLS handshake: nothing at all, plaintext HTTP/2 and HTTP/1.1,
// random bytes, a TLS record header announcing 16 MiB, a ClientHello cut
// in half and then silence, an old protocol version, and a full TLS
// handshake without a client certificate.
func handshakeClasses(rng *rand.Rand) map[string]func(net.Conn) {
	hello := captureClientHello()
	var mu sync.Mutex // rng is not safe for concurrent use
	return map[string]func(net.Conn){
		"silence":       func(net.Conn) { time.Sleep(200 * time.Millisecond) },
		"http2 preface": func(c net.Conn) { c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")) },
		"http/1.1":      func(c net.Conn) { c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) },
		"random bytes": func(c net.Conn) {
			mu.Lock()
			b := make([]byte, 1+rng.IntN(4096))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			mu.Unlock()
			c.Write(b)
		},
		"huge record":    func(c net.Conn) { c.Write([]byte{0x16, 0x03, 0x01, 0xff, 0xff}) },
		"half hello":     func(c net.Conn) { c.Write(hello[:len(hello)/2]); time.Sleep(200 * time.Millisecond) },
		"ssl3 record":    func(c net.Conn) { c.Write([]byte{0x16, 0x03, 0x00, 0x00, 0x05, 1, 0, 0, 1, 0}) },
		"no certificate": func(c net.Conn) { _ = tls.Client(c, &tls.Config{InsecureSkipVerify: true}).Handshake() }, //nolint:gosec // the attacker's side
	}
}

// captureClientHello records the first flight of a real TLS 1.3 client.
func captureClientHello() []byte {
	a, b := net.Pipe()
	go func() { _ = tls.Client(a, &tls.Config{InsecureSkipVerify: true}).Handshake() }() //nolint:gosec
	buf := make([]byte, 4096)
	b.SetReadDeadline(time.Now().Add(time.Second))
	n, _ := b.Read(buf)
	a.Close()
	b.Close()
	return buf[:n]
}

var refusedRe = regexp.MustCompile(`trellis_mtls_handshakes_refused_total\{reason="([a-z_]+)",side="server"\} (\d+)`)

var connsRefusedRe = regexp.MustCompile(`trellis_server_connections_refused_total\{reason="([a-z_]+)",server="[a-z]+"\} (\d+)`)

// TestBrokenHandshakesAreRefusedAndCounted throws every handshake class at
// both gRPC ports from many connections at once, from one address: none
// gets an answer, each is counted (a failed handshake, or a connection
// over --grpc-max-conns-per-client closed before one), the process stays
// ready, no breaker opens, and a client with a valid certificate, from
// another address, is served meanwhile.
func TestBrokenHandshakesAreRefusedAndCounted(t *testing.T) {
	s := start(t)
	rng := rand.New(rand.NewPCG(seed(t), 0))
	classes := handshakeClasses(rng)
	before := s.rss(t)
	var wg sync.WaitGroup
	for _, addr := range []string{s.user, s.order} {
		for name, send := range classes {
			for range 25 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).Dial("tcp", addr)
					if err != nil {
						t.Errorf("%s: %v", name, err)
						return
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(15 * time.Second))
					send(c)
					// Whatever the server sends back must not be gRPC: read
					// until it closes (or our deadline).
					b, _ := io.ReadAll(c)
					if bytes.Contains(b, []byte("grpc-status")) {
						t.Errorf("%s: the server answered a gRPC call", name)
					}
				}()
			}
		}
	}
	// Meanwhile a proper client is served.
	conn, err := grpc.NewClient(s.user, grpc.WithTransportCredentials(credentials.NewTLS(s.tlsConfig(t, s.user))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("a valid client during the attack: %v", err)
	}
	wg.Wait()
	if grew := s.rss(t) - before; grew > 64<<20 {
		t.Errorf("the process grew %d MiB under broken handshakes", grew>>20)
	}
	s.healthy(t)

	resp, err := http.Get("http://" + s.adm + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	counted := 0
	for _, re := range []*regexp.Regexp{refusedRe, connsRefusedRe} {
		for _, m := range re.FindAllStringSubmatch(string(body), -1) {
			n, _ := strconv.Atoi(m[2])
			counted += n
		}
	}
	// Silence and a half hello are cut by the handshake timeout or by our
	// close; everything else is refused at once. Most must be counted.
	if attempts := 2 * 25 * len(classes); counted < attempts/2 {
		t.Errorf("%d refused handshakes counted for %d broken ones", counted, attempts)
	}
	// A client from another trust domain is refused too.
	evilTD := spiffeid.RequireTrustDomainFromString("evil.example")
	svid, bundle, err := identity.IssueFromDir(t.TempDir(), evilTD, "trellis/gateway", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	evil, err := grpc.NewClient(s.user, grpc.WithTransportCredentials(credentials.NewTLS(identity.TLSConfig(identity.Static(svid, bundle), identity.AuthorizeComponent(evilTD)))))
	if err != nil {
		t.Fatal(err)
	}
	defer evil.Close()
	if _, err := healthpb.NewHealthClient(evil).Check(t.Context(), &healthpb.HealthCheckRequest{}); err == nil {
		t.Error("a client of another trust domain was served")
	}
}
