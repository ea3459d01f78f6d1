package identity_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/trellis-mesh/trellis/mesh/identity"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	td    = spiffeid.RequireTrustDomainFromString("trellis.local")
	quiet = slog.New(slog.NewTextHandler(io.Discard, nil))
)

// server serves gRPC health over mTLS with src and records the peer ID of
// each call.
func server(t *testing.T, src identity.Source, m *identity.Metrics) (addr string, peers func() []string) {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	srv := grpc.NewServer(grpc.Creds(identity.ServerCredentials(src, quiet, m)), grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		p, _ := peer.FromContext(ctx)
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && ti.SPIFFEID != nil {
			mu.Lock()
			seen = append(seen, ti.SPIFFEID.String())
			mu.Unlock()
		}
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), seen...) }
}

func check(addr string, creds credentials.TransportCredentials) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func devSource(t *testing.T, ca *identity.DevCA, name string, ttl time.Duration) *identity.Rotating {
	t.Helper()
	src, err := ca.Source(identity.Component(ca.TrustDomain(), name), ttl, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func TestMutualTLSAcceptsTheTrustDomainAndRefusesEveryoneElse(t *testing.T) {
	dir := t.TempDir()
	ca, err := identity.OpenDevCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	m := identity.NewMetrics(prometheus.NewRegistry())
	addr, peers := server(t, devSource(t, ca, "user", time.Hour), m)
	gateway := devSource(t, ca, "gateway", time.Hour)
	userID := identity.Component(td, "user")

	if err := check(addr, identity.ClientCredentials(gateway, userID, quiet, m)); err != nil {
		t.Fatalf("gateway → user: %v", err)
	}
	if got := peers(); len(got) != 1 || got[0] != "spiffe://trellis.local/trellis/gateway" {
		t.Fatalf("server saw peers %v, want the gateway's SPIFFE ID", got)
	}

	// A CA for another trust domain, and the same trust domain's name on
	// a CA nobody here trusts.
	evilCA, err := identity.OpenDevCA(t.TempDir(), spiffeid.RequireTrustDomainFromString("evil.example"))
	if err != nil {
		t.Fatal(err)
	}
	forgerCA, err := identity.OpenDevCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	expired := issueAt(t, ca, "gateway", -2*time.Hour)
	future := issueAt(t, ca, "gateway", 2*time.Hour)
	for _, tc := range []struct {
		name   string
		creds  credentials.TransportCredentials
		reason string
	}{
		{"plaintext", insecure.NewCredentials(), identity.ReasonPlaintext},
		{"other trust domain", identity.ClientCredentials(devSource(t, evilCA, "gateway", time.Hour), userID, quiet, m), identity.ReasonTrustDomain},
		{"forged CA for our trust domain", identity.ClientCredentials(devSource(t, forgerCA, "gateway", time.Hour), userID, quiet, m), identity.ReasonTrustDomain},
		{"expired", identity.ClientCredentials(expired, userID, quiet, m), identity.ReasonExpired},
		{"not yet valid", identity.ClientCredentials(future, userID, quiet, m), identity.ReasonExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := m.Refused("server", tc.reason)
			if err := check(addr, tc.creds); err == nil {
				t.Fatal("call succeeded, want the handshake refused")
			}
			waitFor(t, func() bool { return m.Refused("server", tc.reason) > before })
		})
	}

	// The client checks the server too: a gateway expecting the order
	// service refuses the user service.
	if err := check(addr, identity.ClientCredentials(gateway, identity.Component(td, "order"), quiet, m)); err == nil {
		t.Fatal("client accepted a server with the wrong identity")
	}
	if got := len(peers()); got != 1 {
		t.Fatalf("%d calls reached the server, want only the first", got)
	}
}

// fixedSource serves one SVID.
type fixedSource struct {
	*identity.Rotating
	svid *x509svid.SVID
}

func (f fixedSource) GetX509SVID() (*x509svid.SVID, error) { return f.svid, nil }

// issueAt returns a source whose one-hour SVID was issued at now+shift.
func issueAt(t *testing.T, ca *identity.DevCA, name string, shift time.Duration) identity.Source {
	t.Helper()
	svid, err := identity.IssueAt(ca, identity.Component(td, name), time.Hour, time.Now().Add(shift))
	if err != nil {
		t.Fatal(err)
	}
	return fixedSource{Rotating: devSource(t, ca, name, time.Hour), svid: svid}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatal("condition not met within 5s")
}

// Rotation under load: SVIDs live 2 s and rotate every second while
// clients call without pause, each on new connections and old ones; no
// call may fail.
func TestRotationUnderLoadDropsNoCall(t *testing.T) {
	ca, err := identity.OpenDevCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	m := identity.NewMetrics(prometheus.NewRegistry())
	serverSrc := devSource(t, ca, "user", 2*time.Second)
	addr, _ := server(t, serverSrc, m)
	clientSrc := devSource(t, ca, "gateway", 2*time.Second)
	creds := identity.ClientCredentials(clientSrc, identity.Component(td, "user"), quiet, m)

	long, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	var calls, failed atomic.Int64
	stop := time.Now().Add(3500 * time.Millisecond)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				var err error
				if w%2 == 0 {
					err = check(addr, creds) // a new connection: a new handshake
				} else {
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
					_, err = healthpb.NewHealthClient(long).Check(ctx, &healthpb.HealthCheckRequest{})
					cancel()
				}
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					t.Logf("call failed: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	if serverSrc.Rotations() < 2 || clientSrc.Rotations() < 2 {
		t.Fatalf("rotations: server %d, client %d; want ≥ 2 each during the load", serverSrc.Rotations(), clientSrc.Rotations())
	}
	if failed.Load() != 0 || calls.Load() < 100 {
		t.Fatalf("%d of %d calls failed during rotation, want 0 of ≥ 100", failed.Load(), calls.Load())
	}
}

func TestDevCAIsSharedThroughItsDirectoryAndKeepsItsTrustDomain(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	cas := make([]*identity.DevCA, 8)
	for i := range cas { // processes starting at once on an empty directory
		wg.Add(1)
		go func() {
			defer wg.Done()
			ca, err := identity.OpenDevCA(dir, td)
			if err != nil {
				t.Error(err)
			}
			cas[i] = ca
		}()
	}
	wg.Wait()
	for _, ca := range cas[1:] {
		if ca == nil || !ca.Bundle().Equal(cas[0].Bundle()) {
			t.Fatal("processes opening one directory got different CAs")
		}
	}
	info, err := os.Stat(filepath.Join(dir, "ca-key.pem"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode %v (%v), want 0600", info.Mode().Perm(), err)
	}
	if _, err := identity.OpenDevCA(dir, spiffeid.RequireTrustDomainFromString("other.local")); err == nil {
		t.Fatal("a CA for trellis.local was opened as other.local")
	}
}

func TestFilesAreReloadedWhenTheyChange(t *testing.T) {
	ca, err := identity.OpenDevCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	first, err := ca.Issue(identity.Component(td, "order"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteFiles(dir, first, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	src, err := identity.OpenFiles(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid-key.pem"), filepath.Join(dir, "bundle.pem"), 20*time.Millisecond, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	m := identity.NewMetrics(prometheus.NewRegistry())
	addr, _ := server(t, src, m)
	client := devSource(t, ca, "gateway", time.Hour)
	if err := check(addr, identity.ClientCredentials(client, identity.Component(td, "order"), quiet, m)); err != nil {
		t.Fatal(err)
	}

	// A broken write is ignored; the next good one is taken.
	if err := os.WriteFile(filepath.Join(dir, "svid.pem"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if got, _ := src.GetX509SVID(); got.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0 {
		t.Fatal("a broken file replaced the SVID")
	}
	second, err := ca.Issue(identity.Component(td, "order"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteFiles(dir, second, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		got, _ := src.GetX509SVID()
		return got.Certificates[0].SerialNumber.Cmp(second.Certificates[0].SerialNumber) == 0
	})
	if err := check(addr, identity.ClientCredentials(client, identity.Component(td, "order"), quiet, m)); err != nil {
		t.Fatalf("after reload: %v", err)
	}
	if _, err := identity.OpenFiles(filepath.Join(dir, "missing.pem"), filepath.Join(dir, "svid-key.pem"), filepath.Join(dir, "bundle.pem"), time.Second, quiet); err == nil {
		t.Fatal("missing files opened")
	}
}
