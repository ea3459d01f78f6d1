package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/app/apptest"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testenv.LeakOptions()...) }

// TestNoEventLostAcrossNATSOutageAndRestart creates users and orders under
// steady load while NATS goes down and the process restarts, then counts:
// every acknowledged user and order has exactly one event in JetStream.
func TestNoEventLostAcrossNATSOutageAndRestart(t *testing.T) {
	t.Parallel()
	natsDir := t.TempDir()
	ns := testenv.StartNATS(t, natsDir, -1)
	natsURL := ns.ClientURL()
	u, _ := url.Parse(natsURL)
	natsPort, _ := strconv.Atoi(u.Port())

	cfg := apptest.Config(t, "user,order")
	cfg.NATSURL = natsURL
	cfg.Order.ReconcileInterval = time.Hour
	running := apptest.Start(t, cfg)
	admin := apptest.Admin(t, running) // its keys are in the database: valid across the restart

	var (
		mu       sync.Mutex
		users    []string
		orders   []string
		addr     atomic.Value // "user" and "order" addresses of the running app
		failures atomic.Int64
	)
	addr.Store([2]string{running.Addr(app.TargetUser), running.Addr(app.TargetOrder)})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			a := addr.Load().([2]string)
			uc := userv1.NewUserServiceClient(apptest.DialAs(t, cfg, app.TargetUser, a[0], admin))
			oc := orderv1.NewOrderServiceClient(apptest.DialAs(t, cfg, app.TargetOrder, a[1], admin))
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			ur, err := uc.CreateUser(ctx, &userv1.CreateUserRequest{Email: fmt.Sprintf("load%d@example.com", i), Name: "L", Password: "correct-horse"})
			if err == nil {
				mu.Lock()
				users = append(users, ur.GetUser().GetId())
				mu.Unlock()
				or, err := oc.CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: ur.GetUser().GetId(), RequestId: fmt.Sprint("load-", i),
					Items: []*orderv1.OrderItem{{ProductId: "p", Quantity: 1, UnitPrice: &orderv1.Money{CurrencyCode: "EUR", AmountMinor: 1}}}})
				if err == nil {
					mu.Lock()
					orders = append(orders, or.GetOrder().GetId())
					mu.Unlock()
				} else {
					failures.Add(1)
				}
			} else {
				failures.Add(1)
			}
			cancel()
			time.Sleep(5 * time.Millisecond)
		}
	})
	count := func() (int, int) { mu.Lock(); defer mu.Unlock(); return len(users), len(orders) }
	waitCount := func(n int) {
		deadline := time.Now().Add(20 * time.Second)
		for u, _ := count(); u < n; u, _ = count() {
			if time.Now().After(deadline) {
				t.Fatalf("load stalled at %d users", u)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	waitCount(10)
	ns.Shutdown() // NATS down: RPCs must keep succeeding, events wait in the outbox
	ns.WaitForShutdown()
	u0, _ := count()
	waitCount(u0 + 10)

	running.Stop(t) // restart mid-load (graceful), with NATS still down
	running = apptest.Start(t, cfg)
	addr.Store([2]string{running.Addr(app.TargetUser), running.Addr(app.TargetOrder)})
	u1, _ := count()
	waitCount(u1 + 10)

	testenv.StartNATS(t, natsDir, natsPort) // NATS back, same store
	u2, _ := count()
	waitCount(u2 + 10)
	close(stop)
	wg.Wait()

	// The database rows are the truth: every acknowledged write is there,
	// and each row has exactly one event.
	a := addr.Load().([2]string)
	uc := userv1.NewUserServiceClient(apptest.DialAs(t, cfg, app.TargetUser, a[0], admin))
	oc := orderv1.NewOrderServiceClient(apptest.DialAs(t, cfg, app.TargetOrder, a[1], admin))
	all, err := uc.ListUsers(context.Background(), &userv1.ListUsersRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	rowUsers := map[string]bool{}
	rowOrders := map[string]bool{}
	for _, u := range all.GetUsers() {
		rowUsers[u.GetId()] = true
		os, err := oc.ListOrders(context.Background(), &orderv1.ListOrdersRequest{UserId: u.GetId()})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range os.GetOrders() {
			rowOrders[o.GetId()] = true
		}
	}
	mu.Lock()
	for _, id := range users {
		if !rowUsers[id] {
			t.Errorf("acknowledged user %s is not in the database", id)
		}
	}
	for _, id := range orders {
		if !rowOrders[id] {
			t.Errorf("acknowledged order %s is not in the database", id)
		}
	}
	mu.Unlock()
	nUsers, nOrders := len(rowUsers), len(rowOrders)
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	deadline := time.Now().Add(20 * time.Second)
	for {
		um, ud := testenv.EventCount(t, js, "TRELLIS_USER", "trellis.user.v1.created")
		om, od := testenv.EventCount(t, js, "TRELLIS_ORDER", "trellis.order.v1.created")
		if ud >= nUsers && od >= nOrders || time.Now().After(deadline) {
			t.Logf("database: %d users, %d orders (%d calls failed during the restart); stream: %d user.created, %d order.created",
				nUsers, nOrders, failures.Load(), um, om)
			if ud != nUsers || um != nUsers {
				t.Errorf("user.created: %d messages, %d distinct, want %d (one per user row)", um, ud, nUsers)
			}
			if od != nOrders || om != nOrders {
				t.Errorf("order.created: %d messages, %d distinct, want %d", om, od, nOrders)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The profiler is on the admin address only when asked for: profiles and
// the command line show internals.
func TestPProfOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		cfg := apptest.Config(t, app.TargetUser)
		cfg.PProf = on
		a := apptest.Start(t, cfg)
		resp, err := http.Get("http://" + a.Addr("admin") + "/debug/pprof/cmdline")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[on]
		if resp.StatusCode != want {
			t.Errorf("--pprof=%v: /debug/pprof/cmdline answered %d, want %d", on, resp.StatusCode, want)
		}
	}
}

// TestPProfCmdlineShowsNoSecret: with --pprof, the command line served at
// /debug/pprof/cmdline has the database password redacted (not parallel:
// it sets os.Args).
func TestPProfCmdlineShowsNoSecret(t *testing.T) {
	saved := os.Args
	os.Args = []string{"trellis", "run", "--database-url=postgres://trellis:hunter2-secret@db:5432/trellis", "--nats-url", "nats://u:hunter2-secret@nats:4222"}
	t.Cleanup(func() { os.Args = saved })
	cfg := apptest.Config(t, app.TargetUser)
	cfg.PProf = true
	a := apptest.Start(t, cfg)
	resp, err := http.Get("http://" + a.Addr("admin") + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if strings.Contains(string(b), "hunter2") || !strings.Contains(string(b), "--database-url=postgres://trellis:xxxxx@db:5432/trellis") {
		t.Errorf("/debug/pprof/cmdline = %q", b)
	}
}

// TestAdminHoldsBoundedConnections: the admin server holds at most
// app.AdminMaxConns connections at once; one more is closed at once (it
// used to be held like the rest, each with a goroutine and buffers, as
// many as anyone who reached the port opened), and once they go, it
// answers again.
func TestAdminHoldsBoundedConnections(t *testing.T) {
	a := apptest.Start(t, apptest.Config(t, app.TargetUser))
	addr := a.Addr("admin")
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range app.AdminMaxConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := extra.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection %d: read %d bytes, %v; want it closed", app.AdminMaxConns+1, n, err)
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the connections closed, /healthz: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
