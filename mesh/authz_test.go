package mesh_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/authz"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/identity"
)

// A policy that lets the order service read users and nothing else.
const orderReadsUsers = `{
  "name": "test",
  "allow_rules": [{
    "name": "order-reads-users",
    "source": {"principals": ["spiffe://trellis.local/trellis/order"]},
    "request": {"paths": ["/trellis.user.v1.UserService/GetUser"]}
  }]
}`

func TestPolicyDeniesImpostorsWithoutTrippingTheirBreaker(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("trellis.local")
	ca, err := identity.OpenDevCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	src := func(name string) identity.Source {
		s, err := ca.Source(identity.Component(td, name), time.Hour, quiet)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	policy, err := authz.NewStatic(orderReadsUsers)
	if err != nil {
		t.Fatal(err)
	}
	idm := identity.NewMetrics(prometheus.NewRegistry())
	fake := &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) { return okUser, nil }}
	var peerSeen string
	fake.createUser = func(ctx context.Context, _ *userv1.CreateUserRequest) (*userv1.CreateUserResponse, error) {
		peerSeen = mesh.PeerID(ctx)
		return &userv1.CreateUserResponse{User: okUser.User}, nil
	}
	logs := &testenv.SyncBuffer{}
	reg := prometheus.NewRegistry()
	m := mesh.NewMetrics(reg)
	srv := mesh.NewServer(mesh.ServerConfig{Credentials: identity.ServerCredentials(src("user"), quiet, idm), Policy: policy}, slog.New(slog.NewJSONHandler(logs, nil)), m)
	srv.Register(&userv1.UserService_ServiceDesc, fake, nil)
	addr := testenv.Serve(t, srv)

	client := func(name string) userv1.UserServiceClient {
		return dialMesh(t, addr, mesh.ClientConfig{Caller: name, Credentials: identity.ClientCredentials(src(name), identity.Component(td, "user"), quiet, idm)})
	}
	order, gateway := client("order"), client("gateway")
	ctx := context.Background()
	if _, err := order.GetUser(ctx, &userv1.GetUserRequest{Id: validID}); err != nil {
		t.Fatalf("order → GetUser: %v", err)
	}
	// The order service may not write, the gateway may not even read.
	for range 20 {
		if _, err := order.CreateUser(ctx, &userv1.CreateUserRequest{Email: "a@example.com", Name: "A", Password: "correct horse"}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("order → CreateUser: %v, want PERMISSION_DENIED", err)
		}
		if _, err := gateway.GetUser(ctx, &userv1.GetUserRequest{Id: validID}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("gateway → GetUser: %v, want PERMISSION_DENIED", err)
		}
	}
	if peerSeen != "" {
		t.Fatal("a denied call reached the handler")
	}
	// Denials are the caller's fault: the breaker stays closed.
	if _, err := order.GetUser(ctx, &userv1.GetUserRequest{Id: validID}); err != nil {
		t.Fatalf("after 20 denials, order → GetUser: %v (breaker opened on client faults?)", err)
	}
	if got := testutil.ToFloat64(m.AuthzDenied("spiffe://trellis.local/trellis/order", "/trellis.user.v1.UserService/CreateUser")); got != 20 {
		t.Fatalf("denied counter for order/CreateUser = %v, want 20", got)
	}
	if !strings.Contains(logs.String(), `"msg":"call denied by policy","grpc.method":"/trellis.user.v1.UserService/GetUser","peer.id":"spiffe://trellis.local/trellis/gateway"`) {
		t.Fatalf("no denial log line naming the gateway; logs:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), `"peer.id":"spiffe://trellis.local/trellis/order"`) {
		t.Fatal("access log does not name the caller's SPIFFE ID")
	}
}
