//go:build chaos

package chaos_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
	"github.com/trellis-mesh/trellis/mesh/identity"
)

// Scenario 7: every component's certificate lives 3 s and is replaced
// every 1.5 s while orders flow at 200/s (no client retries: any failure
// shows), and a client opens a new mTLS connection for each of its calls
// to the user service — a handshake against whatever certificate the
// server has at that moment.
func TestIdentityRotationUnderLoad(t *testing.T) {
	s := startSystem(t, options{all: []string{"--identity-ttl", "3s"}})
	users := createUsers(t, s, 10)
	l := newLoad(t, s, users, 200, 0)
	l.start()
	creds := credentials.NewTLS(s.tlsAs("client/chaos"))
	serials := map[string]bool{}
	var churn, churnFailed int
	for stop := time.Now().Add(12 * time.Second); time.Now().Before(stop); time.Sleep(20 * time.Millisecond) {
		conn, err := grpc.NewClient(s.users[0].addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		var p peer.Peer
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		u := users[churn%len(users)]
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.token(u))
		_, err = userv1.NewUserServiceClient(conn).GetUser(ctx, &userv1.GetUserRequest{Id: u}, grpc.Peer(&p))
		cancel()
		conn.Close()
		churn++
		if err != nil {
			churnFailed++
			t.Logf("new connection %d: %v", churn, err)
			continue
		}
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			serials[ti.State.PeerCertificates[0].SerialNumber.String()] = true
		}
	}
	l.finish()
	sum := l.ledger(s)
	var fails []string
	if len(sum.failed) > 0 {
		fails = append(fails, "orders failed while certificates rotated")
	}
	if churnFailed > 0 {
		fails = append(fails, fmt.Sprintf("%d of %d new connections failed", churnFailed, churn))
	}
	if len(serials) < 5 {
		fails = append(fails, fmt.Sprintf("the user service presented %d certificates in 12 s; with a 3 s lifetime it should have rotated ~8 times", len(serials)))
	}
	sum.notes = fmt.Sprintf("ttl 3s: %d server certificates on %d new connections, %d failed", len(serials), churn, churnFailed)
	report(t, "identity-rotation", sum, fails...)
}

// Scenario 8: impostors during load. The order service's identity —
// valid, trusted, stolen — tries what its policy does not allow (delete,
// update and list users) and forges user.deleted events for every user on
// NATS; a client with a certificate from a CA nobody trusts, and one
// without TLS, keep trying to connect. Nothing they do may succeed, fail
// a legitimate order, open a breaker, delete a user or cancel an order.
func TestImpostors(t *testing.T) {
	s := startSystem(t, options{})
	users := createUsers(t, s, 10)
	l := newLoad(t, s, users, 200, 0)
	l.start()

	stolen, err := grpc.NewClient(s.users[0].addr, grpc.WithTransportCredentials(credentials.NewTLS(s.tlsAs("trellis/order"))))
	if err != nil {
		t.Fatal(err)
	}
	defer stolen.Close()
	asOrder := userv1.NewUserServiceClient(stolen)
	var violations atomic.Int64
	forger, err := s.natsAs("trellis/order", nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if strings.Contains(err.Error(), "Permissions Violation") {
			violations.Add(1)
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	td := spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)
	rogueSVID, rogueBundle, err := identity.IssueFromDir(t.TempDir(), td, "trellis/gateway", time.Hour) // a CA nobody trusts
	if err != nil {
		t.Fatal(err)
	}
	rogue := credentials.NewTLS(identity.TLSConfig(identity.Static(rogueSVID, rogueBundle), identity.AuthorizeComponent(td)))

	var attempts, denied, admitted, forged, refusedConns int
	for stop := time.Now().Add(10 * time.Second); time.Now().Before(stop); time.Sleep(20 * time.Millisecond) {
		victim := users[attempts%len(users)]
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		for _, call := range []func() error{
			func() error { _, err := asOrder.DeleteUser(ctx, &userv1.DeleteUserRequest{Id: victim}); return err },
			func() error {
				_, err := asOrder.UpdateUser(ctx, &userv1.UpdateUserRequest{User: &userv1.User{Id: victim, Name: "Owned"}})
				return err
			},
			func() error { _, err := asOrder.ListUsers(ctx, &userv1.ListUsersRequest{}); return err },
		} {
			attempts++
			switch err := call(); status.Code(err) {
			case codes.PermissionDenied:
				denied++
			default:
				admitted++
				t.Logf("stolen order identity got %v", err)
			}
		}
		cancel()
		payload, _ := proto.Marshal(&eventsv1.UserDeleted{UserId: victim, DeleteTime: timestamppb.Now()})
		id := uuid.NewString()
		h := nats.Header{}
		h.Set(eventbus.HeaderID, id)
		h.Set(eventbus.HeaderType, "trellis.events.v1.UserDeleted")
		h.Set("Nats-Msg-Id", id)
		_ = forger.PublishMsg(&nats.Msg{Subject: "trellis.user.v1.deleted", Header: h, Data: payload})
		forged++
		for _, c := range []credentials.TransportCredentials{rogue, insecure.NewCredentials()} {
			conn, err := grpc.NewClient(s.users[0].addr, grpc.WithTransportCredentials(c))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if _, err := userv1.NewUserServiceClient(conn).GetUser(ctx, &userv1.GetUserRequest{Id: victim}); err != nil {
				refusedConns++
			} else {
				admitted++
				t.Log("a rogue or plaintext client was served")
			}
			cancel()
			conn.Close()
		}
	}
	_ = forger.Flush()
	time.Sleep(2 * time.Second) // let any forged event that got through take effect
	l.finish()
	sum := l.ledger(s)

	var fails []string
	if len(sum.failed) > 0 {
		fails = append(fails, "legitimate orders failed during the attack")
	}
	if admitted > 0 {
		fails = append(fails, fmt.Sprintf("%d impostor attempts were not refused", admitted))
	}
	db, err := sql.Open("pgx", s.dbURL+"&search_path=trellis_order")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var cancelled int
	if err := db.QueryRow("SELECT count(*) FROM orders WHERE status = 3").Scan(&cancelled); err != nil {
		t.Fatal(err)
	}
	if cancelled > 0 {
		fails = append(fails, fmt.Sprintf("%d orders were cancelled: a forged user.deleted got through", cancelled))
	}
	for _, u := range users {
		req, _ := http.NewRequest(http.MethodGet, "http://"+s.gateways[0].addr+"/api/v1/users/"+u, nil)
		req.Header.Set("Authorization", "Bearer "+s.token(u))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			fails = append(fails, fmt.Sprintf("user %s answers %d after the attack", u, resp.StatusCode))
		}
	}
	for _, c := range append(s.orders, s.gateways...) {
		if n := metric(t, c.admin, "trellis_breaker_transitions_total", `to="open"`); n > 0 {
			fails = append(fails, fmt.Sprintf("a breaker opened %v times", n))
		}
	}
	if d := metric(t, s.users[0].admin, "trellis_authz_denied_total"); int(d) < denied {
		fails = append(fails, fmt.Sprintf("trellis_authz_denied_total %v, want ≥ %d", d, denied))
	}
	if int(violations.Load()) < forged {
		fails = append(fails, fmt.Sprintf("NATS refused %d of %d forged events", violations.Load(), forged))
	}
	sum.notes = fmt.Sprintf("%d stolen-identity calls denied, %d/%d forged events refused by NATS, %d rogue/plaintext connections refused",
		denied, violations.Load(), forged, refusedConns)
	report(t, "impostors", sum, fails...)
}
