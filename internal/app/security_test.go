package app_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/app/apptest"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
	"github.com/trellis-mesh/trellis/mesh/identity"
)

// natsAs connects to NATS with an SVID for spiffe://<td>/<path> from the
// test's development CA; errs receives the connection's async errors
// (permission violations). An identity the broker has no user for is
// refused at connect: nc is nil and err says so.
func natsAs(t *testing.T, cfg app.Config, url, path string) (nc *nats.Conn, errs chan error, err error) {
	t.Helper()
	svid, bundle := apptest.Issue(t, cfg, path)
	errs = make(chan error, 16)
	tlsCfg := identity.TLSConfig(identity.Static(svid, bundle), tlsconfig.AuthorizeID(identity.Component(svid.ID.TrustDomain(), "nats")))
	nc, err = nats.Connect(url, nats.Secure(tlsCfg), nats.MaxReconnects(0), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	}))
	if err != nil {
		return nil, nil, err
	}
	t.Cleanup(nc.Close)
	return nc, errs, nil
}

// forgeUserDeleted publishes a well-formed user.deleted event for userID,
// as the user service's relay would.
func forgeUserDeleted(t *testing.T, nc *nats.Conn, userID string) {
	t.Helper()
	payload, _ := proto.Marshal(&eventsv1.UserDeleted{UserId: userID, DeleteTime: timestamppb.Now()})
	h := nats.Header{}
	id := uuid.NewString()
	h.Set(eventbus.HeaderSpecVersion, "1.0")
	h.Set(eventbus.HeaderID, id)
	h.Set(eventbus.HeaderType, "trellis.events.v1.UserDeleted")
	h.Set(eventbus.HeaderSource, "trellis/user")
	h.Set(eventbus.HeaderTime, time.Now().Format(time.RFC3339Nano))
	h.Set(eventbus.HeaderSubject, userID)
	h.Set("Nats-Msg-Id", id)
	if err := nc.PublishMsg(&nats.Msg{Subject: "trellis.user.v1.deleted", Header: h, Data: payload}); err != nil {
		t.Fatal(err)
	}
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// userWithOrder creates a user and a confirmed order of theirs.
func userWithOrder(t *testing.T, uc userv1.UserServiceClient, oc orderv1.OrderServiceClient) (userID, orderID string) {
	t.Helper()
	ctx := context.Background()
	u, err := uc.CreateUser(ctx, &userv1.CreateUserRequest{Email: uuid.NewString()[:8] + "@example.com", Name: "Victim", Password: "correct horse"})
	if err != nil {
		t.Fatal(err)
	}
	var o *orderv1.CreateOrderResponse
	waitFor(t, 10*time.Second, func() bool { // the order service learns of the user by its event
		o, err = oc.CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: u.User.Id, RequestId: uuid.NewString(), Items: []*orderv1.OrderItem{{ProductId: "book", Quantity: 1, UnitPrice: &orderv1.Money{CurrencyCode: "EUR", AmountMinor: 100}}}})
		return err == nil && o.Order.Status == orderv1.OrderStatus_ORDER_STATUS_CONFIRMED
	})
	return u.User.Id, o.Order.Id
}

func orderStatus(t *testing.T, oc orderv1.OrderServiceClient, id string) orderv1.OrderStatus {
	t.Helper()
	o, err := oc.GetOrder(context.Background(), &orderv1.GetOrderRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	return o.Order.Status
}

// forgeries is the issue's attack: a user.deleted event for a live user,
// published by every identity except the user service. The broker must
// refuse each; the victim's order stays open. The same event from the
// user service's identity does cancel an order, so the check can fail.
func forgeries(t *testing.T, cfg app.Config, natsURL string, uc userv1.UserServiceClient, oc orderv1.OrderServiceClient) {
	victim, victimOrder := userWithOrder(t, uc, oc)
	for _, who := range []string{"trellis/order", "trellis/gateway", "client/mallory", "client/" + app.EventsReader} {
		nc, errs, err := natsAs(t, cfg, natsURL, who)
		if err != nil {
			if !strings.Contains(err.Error(), "Authorization Violation") {
				t.Errorf("%s: %v, want an authorization violation", who, err)
			}
			continue // refused at the door
		}
		forgeUserDeleted(t, nc, victim)
		select {
		case err := <-errs:
			if !strings.Contains(err.Error(), "Permissions Violation") {
				t.Errorf("%s: %v, want a permissions violation", who, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s published trellis.user.v1.deleted without a permissions violation", who)
		}
	}
	control, controlOrder := userWithOrder(t, uc, oc)
	nc, _, err := natsAs(t, cfg, natsURL, "trellis/user")
	if err != nil {
		t.Fatal(err)
	}
	forgeUserDeleted(t, nc, control)
	waitFor(t, 10*time.Second, func() bool { return orderStatus(t, oc, controlOrder) == orderv1.OrderStatus_ORDER_STATUS_CANCELLED })
	if got := orderStatus(t, oc, victimOrder); got != orderv1.OrderStatus_ORDER_STATUS_CONFIRMED {
		t.Fatalf("victim's order is %v after forged events, want CONFIRMED", got)
	}
	// No certificate, or one from a CA nobody trusts: no connection.
	if _, err := nats.Connect(natsURL, nats.Secure(&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}), nats.MaxReconnects(0)); err == nil { //nolint:gosec // the attacker's config
		t.Error("connected to NATS without a client certificate")
	}
	other := cfg
	other.Identity.Dir = t.TempDir() // a second CA for the same trust domain
	forgedSVID, _ := apptest.Issue(t, other, "trellis/user")
	_, realBundle := apptest.Issue(t, cfg, "client/bystander")
	forged := identity.TLSConfig(identity.Static(forgedSVID, realBundle), tlsconfig.AuthorizeAny())
	if _, err := nats.Connect(natsURL, nats.Secure(forged), nats.MaxReconnects(0)); err == nil {
		t.Error("connected to NATS as the user service with a certificate from another CA")
	}
}

func waitFor(t *testing.T, d time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("condition not met within %v", d)
}

func TestEmbeddedNATSRefusesForgedEvents(t *testing.T) {
	t.Parallel()
	cfg := apptest.Config(t, app.TargetAll)
	cfg.NATSListen = "127.0.0.1:0"
	running := apptest.Start(t, cfg)
	admin := apptest.Admin(t, running)
	uc := userv1.NewUserServiceClient(running.DialAs(t, app.TargetUser, admin))
	oc := orderv1.NewOrderServiceClient(running.DialAs(t, app.TargetOrder, admin))
	forgeries(t, cfg, "tls://"+running.Addr("nats"), uc, oc)
}

// TestExternalNATSServerWithTheDocumentedConfig runs the machine's
// nats-server with the configuration `trellis identity nats-config`
// prints, and Trellis against it: events flow, forgeries are refused.
func TestExternalNATSServerWithTheDocumentedConfig(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		bin = "/usr/sbin/nats-server"
	}
	cfg := apptest.Config(t, app.TargetAll)
	td := spiffeid.RequireTrustDomainFromString(cfg.Identity.TrustDomain)
	svid, bundle := apptest.Issue(t, cfg, "trellis/nats")
	dir := t.TempDir()
	if err := identity.WriteFiles(dir, svid, bundle); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "nats.conf")
	addr := testenv.FreeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	text := fmt.Sprintf("listen: %q\njetstream { store_dir: %q }\n", net.JoinHostPort(host, port), filepath.Join(dir, "js")) +
		app.NATSServerConfig(td.Name(), "", filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid-key.pem"), filepath.Join(dir, "bundle.pem"))
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	cmd := exec.Command(bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server not listening on %s:\n%s\nconfig:\n%s", addr, logs.String(), text)
		}
	}
	cfg.NATSURL = "tls://" + addr
	running := apptest.Start(t, cfg)
	admin := apptest.Admin(t, running)
	uc := userv1.NewUserServiceClient(running.DialAs(t, app.TargetUser, admin))
	oc := orderv1.NewOrderServiceClient(running.DialAs(t, app.TargetOrder, admin))
	forgeries(t, cfg, cfg.NATSURL, uc, oc)
	if t.Failed() {
		t.Logf("nats-server config:\n%s\nnats-server log:\n%s", text, logs.String())
	}
}

// TestPolicyFileIsReloaded: with --authz-policy, a change to the file
// takes effect without a restart; a broken file keeps the last good policy.
func TestPolicyFileIsReloaded(t *testing.T) {
	t.Parallel()
	cfg := apptest.Config(t, app.TargetUser)
	cfg.AuthzPolicy = filepath.Join(t.TempDir(), "policy.json")
	cfg.AuthzReload = 50 * time.Millisecond
	policy := app.DefaultPolicy(cfg.Identity.TrustDomain)
	if err := os.WriteFile(cfg.AuthzPolicy, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	running := apptest.Start(t, cfg)
	users := userv1.NewUserServiceClient(running.DialAs(t, app.TargetUser, apptest.Admin(t, running)))
	list := func() codes.Code {
		_, err := users.ListUsers(context.Background(), &userv1.ListUsersRequest{})
		return status.Code(err)
	}
	if got := list(); got != codes.OK {
		t.Fatalf("client → ListUsers under the default policy: %v", got)
	}
	// Clients lose the user service: the next calls are denied.
	noClients := strings.Replace(policy, `"spiffe://`+cfg.Identity.TrustDomain+`/client/*"`, `"spiffe://`+cfg.Identity.TrustDomain+`/client/nobody"`, 1)
	if noClients == policy {
		t.Fatal("the default policy has no client rule to remove")
	}
	if err := os.WriteFile(cfg.AuthzPolicy, []byte(noClients), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return list() == codes.PermissionDenied })
	// A broken file is not applied: still denied, not open.
	if err := os.WriteFile(cfg.AuthzPolicy, []byte(`{"name": "broken", "allow_rules": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if got := list(); got != codes.PermissionDenied {
		t.Fatalf("after a broken policy file: %v, want the last good policy (PERMISSION_DENIED)", got)
	}
	if err := os.WriteFile(cfg.AuthzPolicy, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return list() == codes.OK })
}

// TestBuiltInPolicyMatrix checks every (caller, method) pair of the
// built-in policy over real mTLS: who may call what, and that everything
// else is denied.
func TestBuiltInPolicyMatrix(t *testing.T) {
	t.Parallel()
	cfg := apptest.Config(t, "user,order")
	running := apptest.Start(t, cfg)
	dial := func(path, server string) *grpc.ClientConn {
		conn, err := grpc.NewClient(running.Addr(server), grpc.WithTransportCredentials(apptest.CredentialsAs(t, cfg, path, server)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	methods := map[string][]string{
		"user":  {"CreateUser", "GetUser", "BatchGetUsers", "ListUsers", "UpdateUser", "DeleteUser"},
		"order": {"CreateOrder", "GetOrder", "ListOrders", "CancelOrder"},
	}
	service := map[string]string{"user": "trellis.user.v1.UserService", "order": "trellis.order.v1.OrderService"}
	allowed := func(caller, server, method string) bool {
		switch {
		case caller == "trellis/gateway" || strings.HasPrefix(caller, "client/"):
			return true
		case caller == "trellis/order":
			return server == "user" && method == "GetUser"
		}
		return false
	}
	for _, caller := range []string{"trellis/gateway", "trellis/order", "trellis/user", "trellis/nats", "client/alice", "intruder/x"} {
		for server, ms := range methods {
			conn := dial(caller, server)
			for _, m := range ms {
				// An empty request: an allowed call fails validation
				// (INVALID_ARGUMENT) or finds nothing; a denied one never
				// gets that far.
				err := conn.Invoke(context.Background(), "/"+service[server]+"/"+m, &emptypb.Empty{}, &emptypb.Empty{})
				denied := status.Code(err) == codes.PermissionDenied
				if denied == allowed(caller, server, m) {
					t.Errorf("%s → %s/%s: %v (allowed by design: %v)", caller, server, m, err, allowed(caller, server, m))
				}
			}
			// Health: any identity of the trust domain.
			if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
				t.Errorf("%s → %s health: %v", caller, server, err)
			}
		}
	}
}
