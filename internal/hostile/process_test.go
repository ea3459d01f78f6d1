package hostile

import (
	"context"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/mesh/identity"

	"github.com/trellis-mesh/trellis/internal/proc"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

var trellisBin string

func TestMain(m *testing.M) { testenv.RunWithTrellis(m, &trellisBin) }

// system is one `trellis run` process (all components, SQLite, embedded
// NATS) in its default configuration but for the ports and a fast hash.
type system struct {
	p                      *proc.Proc
	dir                    string // its working directory: ./data/identity holds its CA
	http, user, order, adm string
	logs                   *testenv.SyncBuffer

	tokenOnce sync.Once
	uid, tok  string

	bareMu sync.Mutex
	bare   map[string]*grpc.ClientConn
}

// signedIn is the attacker's own account, signed in: the attacks come
// from a user who may call the API (past authentication), acting on what
// it owns. It returns the user's id and access token.
func (s *system) signedIn(t testing.TB) (string, string) {
	s.tokenOnce.Do(func() {
		conn, err := grpc.NewClient(s.user, grpc.WithTransportCredentials(credentials.NewTLS(s.tlsConfig(t, s.user))))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx := context.Background()
		email := "hostile-" + strconv.Itoa(rand.IntN(1e9)) + "@example.com"
		u, err := userv1.NewUserServiceClient(conn).CreateUser(ctx, &userv1.CreateUserRequest{Email: email, Name: "Mallory", Password: "correct-horse"})
		if err != nil {
			t.Fatal(err)
		}
		in, err := userv1.NewAuthServiceClient(conn).SignIn(ctx, &userv1.SignInRequest{Email: email, Password: "correct-horse"})
		if err != nil {
			t.Fatal(err)
		}
		s.uid, s.tok = u.GetUser().GetId(), in.GetAccessToken()
	})
	return s.uid, s.tok
}

func start(t testing.TB, extra ...string) *system {
	t.Helper()
	s := &system{logs: &testenv.SyncBuffer{}, dir: t.TempDir()}
	// Port 0 everywhere: trellis picks free ports and logs them, so no
	// other test can take a port between choosing and binding it.
	args := append([]string{"run", "--http-addr", "127.0.0.1:0", "--user-addr", "127.0.0.1:0", "--order-addr", "127.0.0.1:0",
		"--admin-addr", "127.0.0.1:0", "--bcrypt-cost", "4",
		// The attacks come from one address, faster than any limit: with
		// limits on they would mostly meet 429 and never reach what they
		// attack. The limits have their own tests (gateway).
		"--rate-read", "0", "--rate-write", "0", "--rate-auth", "0", "--rate-signin-account", "0"}, extra...)
	var err error
	if s.p, err = proc.StartIn(s.dir, "trellis", trellisBin, s.logs, args...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.p.Stop(20 * time.Second)
		if t.Failed() {
			t.Logf("trellis log (last 4 KiB):\n%s", tail(s.logs.String(), 4096))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !s.listening() || !s.ready() {
		if time.Now().After(deadline) {
			t.Fatalf("trellis not ready in 30s:\n%s", s.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

var listeningRe = regexp.MustCompile(`"msg":"listening".*?"component":"(\w+)","addr":"([^"]+)"`)

// listening reads the addresses trellis chose from its log.
func (s *system) listening() bool {
	for _, m := range listeningRe.FindAllStringSubmatch(s.logs.String(), -1) {
		switch m[1] {
		case "gateway":
			s.http = m[2]
		case "user":
			s.user = m[2]
		case "order":
			s.order = m[2]
		case "admin":
			s.adm = m[2]
		}
	}
	return s.http != "" && s.user != "" && s.order != "" && s.adm != ""
}

func (s *system) ready() bool {
	resp, err := http.Get("http://" + s.adm + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// rss is the process's resident set size in bytes, from /proc.
func (s *system) rss(t testing.TB) int64 {
	t.Helper()
	n, err := s.p.RSS()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// peakRSS samples the process's RSS every 20 ms until stop is closed and
// returns the highest value seen.
func (s *system) peakRSS(t testing.TB, stop <-chan struct{}) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		var peak int64
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if r := s.rss(t); r > peak {
				peak = r
			}
			select {
			case <-stop:
				out <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

var breakerOpened = regexp.MustCompile(`trellis_breaker_transitions_total\{[^}]*to="open"[^}]*\} ([0-9.e+]+)`)

// healthy fails the test if the process is not ready or any breaker has
// ever opened.
func (s *system) healthy(t testing.TB) {
	t.Helper()
	if !s.ready() {
		t.Error("/readyz is not ready")
	}
	resp, err := http.Get("http://" + s.adm + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, m := range breakerOpened.FindAllStringSubmatch(string(b), -1) {
		if m[1] != "0" {
			t.Errorf("a breaker opened: %s", m[0])
		}
	}
}

// tlsConfig is what an attacker holding a valid client certificate
// (spiffe://trellis.local/client/hostile, from the process's own
// development CA) presents to the component server at addr.
func (s *system) tlsConfig(t testing.TB, addr string) *tls.Config {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)
	svid, bundle, err := identity.IssueFromDir(filepath.Join(s.dir, "data", "identity"), td, "client/hostile", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	server := "user"
	if addr == s.order {
		server = "order"
	}
	return identity.TLSConfig(identity.Static(svid, bundle), tlsconfig.AuthorizeID(identity.Component(td, server)))
}

// dialBare is a gRPC connection to the component server at addr with a
// valid client certificate and no token, made once per address.
func (s *system) dialBare(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	s.bareMu.Lock()
	defer s.bareMu.Unlock()
	if c, ok := s.bare[addr]; ok {
		return c
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(s.tlsConfig(t, addr))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if s.bare == nil {
		s.bare = map[string]*grpc.ClientConn{}
	}
	s.bare[addr] = conn
	return conn
}

// dial is a gRPC connection to the component server at addr as a client
// with a valid certificate and a signed-in user's token: the attacks below
// come from inside the trust domain, past mTLS, authorization and
// authentication.
func (s *system) dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	_, tok := s.signedIn(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(s.tlsConfig(t, addr))),
		grpc.WithPerRPCCredentials(testenv.NewBearer(tok)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
