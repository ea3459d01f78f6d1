// Package apptest runs Trellis components in a test exactly as `trellis
// run` wires them, on loopback ports, and stops them at cleanup.
package apptest

import (
	"context"
	"crypto/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/trellis-mesh/trellis/gateway"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/mesh/identity"

	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

var (
	natsMu   sync.Mutex
	natsURLs = map[testing.TB]string{}
	caDirs   = map[testing.TB]string{}
)

// identityDir is the test's development CA directory, shared by the
// components the test starts (they must trust each other).
func identityDir(t testing.TB) string {
	natsMu.Lock()
	defer natsMu.Unlock()
	if d, ok := caDirs[t]; ok {
		return d
	}
	d := t.TempDir()
	caDirs[t] = d
	t.Cleanup(func() {
		natsMu.Lock()
		delete(caDirs, t)
		natsMu.Unlock()
	})
	return d
}

// NATSURL is the test's NATS server, shared by the components the test
// starts (they must see each other's events).
func NATSURL(t testing.TB) string {
	natsMu.Lock()
	defer natsMu.Unlock()
	if u, ok := natsURLs[t]; ok {
		return u
	}
	u, _ := testenv.NATS(t)
	natsURLs[t] = u
	t.Cleanup(func() {
		natsMu.Lock()
		delete(natsURLs, t)
		natsMu.Unlock()
	})
	return u
}

// Config returns the defaults of `trellis run` with every port free-picked,
// a temp data dir, a fast password hash and, unless target is all (which
// embeds its own), a NATS server shared by the test's components.
func Config(t testing.TB, target string) app.Config {
	nats := ""
	if target != app.TargetAll {
		nats = NATSURL(t)
	}
	c := app.Defaults()
	c.NATSURL, c.Target, c.DataDir = nats, target, t.TempDir()
	c.UserAddr, c.OrderAddr, c.AdminAddr, c.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	c.Upstream.Timeout, c.Server.DrainTimeout = 2*time.Second, 5*time.Second
	c.User.BcryptCost = 4
	// Tests call from one address far faster than a person: no rate
	// limits unless a test sets them.
	c.Gateway.Limits = gateway.RateLimits{}
	c.Identity.Dir = identityDir(t)
	return c
}

// Credentials are mTLS credentials of the client identity
// spiffe://<td>/client/<client>, issued by cfg's development CA, for
// calling the component server ("user", "order").
func Credentials(t testing.TB, cfg app.Config, client, server string) credentials.TransportCredentials {
	t.Helper()
	if cfg.Identity.Insecure {
		return insecure.NewCredentials()
	}
	return CredentialsAs(t, cfg, "client/"+client, server)
}

// CredentialsAs are mTLS credentials of the identity spiffe://<td>/<path>
// (e.g. trellis/order, to act as that component), issued by cfg's
// development CA, for calling the component server.
func CredentialsAs(t testing.TB, cfg app.Config, path, server string) credentials.TransportCredentials {
	t.Helper()
	svid, bundle := Issue(t, cfg, path)
	m := identity.NewMetrics(prometheus.NewRegistry())
	return identity.ClientCredentials(identity.Static(svid, bundle), identity.Component(svid.ID.TrustDomain(), server), testenv.Logger(), m)
}

// Issue is an SVID for spiffe://<td>/<path> from cfg's development CA,
// and the CA's trust bundle.
func Issue(t testing.TB, cfg app.Config, path string) (*x509svid.SVID, *x509bundle.Bundle) {
	t.Helper()
	svid, bundle, err := identity.IssueFromDir(cfg.Identity.Dir, spiffeid.RequireTrustDomainFromString(cfg.Identity.TrustDomain), path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return svid, bundle
}

// ClientFiles writes the client identity spiffe://<td>/client/<client> as
// files (svid.pem, svid-key.pem, bundle.pem) and returns their directory.
func ClientFiles(t testing.TB, cfg app.Config, client string) string {
	t.Helper()
	svid, bundle := Issue(t, cfg, "client/"+client)
	dir := t.TempDir()
	if err := identity.WriteFiles(dir, svid, bundle); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Dial connects to the component server ("user", "order") of a running
// configuration as the client identity spiffe://<td>/client/test.
func Dial(t testing.TB, cfg app.Config, server, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(Credentials(t, cfg, "test", server)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Dial connects to one of r's components as a client.
func (r *Running) Dial(t testing.TB, server string) *grpc.ClientConn {
	return Dial(t, r.cfg, server, r.Addr(server))
}

// Running is a started App.
type Running struct {
	*app.App
	cfg  app.Config
	stop context.CancelFunc
	done chan error
}

// Start builds and runs cfg; it is stopped at cleanup if not before.
func Start(t testing.TB, cfg app.Config) *Running {
	t.Helper()
	a, err := app.New(context.Background(), cfg, testenv.Logger())
	if err != nil {
		t.Fatalf("start %s: %v", cfg.Target, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{App: a, cfg: cfg, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() { r.Stop(t) })
	return r
}

// Stop shuts the components down gracefully and waits for them.
func (r *Running) Stop(t testing.TB) {
	if r.stop == nil {
		return
	}
	r.stop()
	r.stop = nil
	if err := <-r.done; err != nil {
		t.Errorf("run: %v", err)
	}
}

// SignUp creates an account through the user service of r (target user or
// all) and signs it in; it returns the user's id and access token.
func SignUp(t testing.TB, r *Running, email string) (id, token string) {
	t.Helper()
	conn := r.Dial(t, app.TargetUser)
	ctx := context.Background()
	created, err := userv1.NewUserServiceClient(conn).CreateUser(ctx, &userv1.CreateUserRequest{Email: email, Name: "Test User", Password: Password})
	if err != nil {
		t.Fatalf("sign up %s: %v", email, err)
	}
	return created.GetUser().GetId(), SignIn(t, r, email)
}

// SignIn signs the account with email (and Password) in and returns its
// access token.
func SignIn(t testing.TB, r *Running, email string) string {
	t.Helper()
	resp, err := userv1.NewAuthServiceClient(r.Dial(t, app.TargetUser)).SignIn(context.Background(), &userv1.SignInRequest{Email: email, Password: Password})
	if err != nil {
		t.Fatalf("sign in %s: %v", email, err)
	}
	return resp.GetAccessToken()
}

// Password is the password of the accounts SignUp makes.
const Password = "correct-horse-battery"

// Admin signs up an account, makes it an admin as an operator would
// (trellis users grant-admin, on r's database) and returns its access
// token. Tests of features other than authorization call as an admin.
func Admin(t testing.TB, r *Running) string {
	t.Helper()
	email := "admin-" + strings.ToLower(rand.Text()[:10]) + "@trellis.test"
	SignUp(t, r, email)
	if err := app.GrantAdmin(context.Background(), app.GrantAdminConfig{Email: email, DataDir: r.cfg.DataDir, DatabaseURL: r.cfg.DatabaseURL}); err != nil {
		t.Fatal(err)
	}
	return SignIn(t, r, email)
}

// DialAs connects to one of r's components as a client that sends token
// with every call.
func (r *Running) DialAs(t testing.TB, server, token string) *grpc.ClientConn {
	return DialAs(t, r.cfg, server, r.Addr(server), token)
}

// DialAs is Dial with token sent as the bearer token of every call.
func DialAs(t testing.TB, cfg app.Config, server, addr, token string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(Credentials(t, cfg, "test", server)),
		grpc.WithPerRPCCredentials(testenv.NewBearer(token)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
