//go:build chaos

package chaos_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/google/uuid"

	"github.com/trellis-mesh/trellis/internal/testenv"
)

// pendingOrders counts orders not yet settled by the reconciler.
func pendingOrders(t *testing.T, s *system) int {
	db, err := sql.Open("pgx", s.dbURL+"&search_path=trellis_order")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM orders WHERE status = 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Scenario 1: kill -9 the user service for 10 s under load.
func TestKillUserService(t *testing.T) {
	s := startSystem(t, options{})
	users := createUsers(t, s, 20)
	admin := s.admin(t) // the probes below order for users nobody knows: only an admin may
	l := newLoad(t, s, users, 200, 0)
	w := watchBreaker(t, s.orders[0].admin)
	l.start()
	time.Sleep(3 * time.Second)

	killed := time.Now()
	s.users[0].kill()
	// Probe with users the replica does not know: while the breaker is
	// open they must be refused at once.
	var probeMu sync.Mutex
	var openLatencies []time.Duration
	probeStop := make(chan struct{})
	var probes sync.WaitGroup
	probes.Go(func() {
		for {
			select {
			case <-probeStop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			body := fmt.Sprintf(`{"userId":%q,"requestId":%q,"items":[{"productId":"p","quantity":1,"unitPrice":{"currencyCode":"EUR","amountMinor":"1"}}]}`, uuid.NewString(), uuid.NewString())
			start := time.Now()
			resp, err := post(http.DefaultClient, "http://"+s.gateways[0].addr+"/api/v1/orders", body, admin) // an admin may order for anyone
			d := time.Since(start)
			if err != nil {
				continue
			}
			resp.Body.Close()
			if opened, _ := w.state(); !opened.IsZero() && resp.StatusCode == http.StatusServiceUnavailable && metric(t, s.orders[0].admin, "trellis_breaker_state", `upstream="user"`) == 2 {
				probeMu.Lock()
				openLatencies = append(openLatencies, d)
				probeMu.Unlock()
			}
		}
	})
	// The order service's own measure of its calls to the user service
	// while the breaker is open: those are the breaker's answers.
	deadlineOpen := time.Now().Add(5 * time.Second)
	for opened, _ := w.state(); opened.IsZero() && time.Now().Before(deadlineOpen); opened, _ = w.state() {
		time.Sleep(10 * time.Millisecond)
	}
	hist := func() map[string]float64 {
		return buckets(t, s.orders[0].admin, "grpc_client_handling_seconds", `grpc_method="GetUser"`)
	}
	before := hist()
	time.Sleep(9 * time.Second)
	after := hist()
	s.users[0].restart(t)
	recovered := time.Now()
	time.Sleep(5 * time.Second)
	close(probeStop)
	probes.Wait()
	l.finish()
	breaker := w.finish()

	deadline := time.Now().Add(10 * time.Second)
	for pendingOrders(t, s) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	sum := l.ledger(s)
	opened, closed := w.state()
	var fails []string
	if opened.IsZero() || opened.Sub(killed) > 2*time.Second {
		fails = append(fails, fmt.Sprintf("breaker opened %v after the kill (want within 2s at 200 req/s, i.e. after its 3 failures)", opened.Sub(killed)))
	}
	total, fast := after["+Inf"]-before["+Inf"], after["0.005"]-before["0.005"]
	if total < 100 || fast/total < 0.99 {
		fails = append(fails, fmt.Sprintf("open-breaker answers: %v calls, %.2f%% within 5ms (want p99 < 5ms)", total, 100*fast/total))
	}
	if closed.IsZero() || closed.Sub(recovered) > 3*time.Second {
		fails = append(fails, fmt.Sprintf("breaker closed %v after the user service was back (want ≤ Timeout 2s + 1s)", closed.Sub(recovered)))
	}
	if n := pendingOrders(t, s); n > 0 {
		fails = append(fails, fmt.Sprintf("%d orders still PENDING after recovery", n))
	}
	for code, n := range sum.failed {
		fails = append(fails, fmt.Sprintf("%d orders for known users failed with %d (want all accepted, PENDING while degraded)", n, code))
	}
	t.Logf("while open: %v upstream calls answered by the breaker, %.2f%% within 0.5ms, %.2f%% within 5ms; end-to-end through the gateway (unknown users, 503): p50 %v, p99 %v",
		total, 100*(after["0.0005"]-before["0.0005"])/total, 100*fast/total, percentile(openLatencies, 0.5), percentile(openLatencies, 0.99))
	sum.notes = fmt.Sprintf("breaker %s (open→%v, closed %v after recovery; %.1f%% of open answers ≤0.5ms)", breaker,
		opened.Sub(killed).Round(time.Millisecond), closed.Sub(recovered).Round(time.Millisecond), 100*(after["0.0005"]-before["0.0005"])/total)
	report(t, "kill-user-10s", sum, fails...)
}

// Scenario 2: kill -9 NATS for 10 s under load.
func TestKillNATS(t *testing.T) {
	s := startSystem(t, options{})
	users := createUsers(t, s, 10)
	l := newLoad(t, s, users, 200, 0)
	l.start()
	time.Sleep(3 * time.Second)
	s.nats.kill()
	time.Sleep(10 * time.Second)
	backlog := metric(t, s.orders[0].admin, "trellis_outbox_pending")
	s.startNATS()
	time.Sleep(3 * time.Second)
	l.finish()
	deadline := time.Now().Add(30 * time.Second)
	for metric(t, s.orders[0].admin, "trellis_outbox_pending") != 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	drained := metric(t, s.orders[0].admin, "trellis_outbox_pending")
	sum := l.ledger(s)
	var fails []string
	if len(sum.failed) > 0 {
		fails = append(fails, "RPCs failed while NATS was down")
	}
	if backlog < 100 {
		fails = append(fails, fmt.Sprintf("outbox backlog during the outage was %v; want it to grow (≈2000)", backlog))
	}
	if drained != 0 {
		logs := s.orders[0].logs()
		if len(logs) > 3000 {
			logs = logs[len(logs)-3000:]
		}
		fails = append(fails, fmt.Sprintf("outbox backlog %v after recovery; want drained\norder service log:\n%s", drained, logs))
	}
	sum.notes = fmt.Sprintf("outbox backlog peak≈%v drained=%v", backlog, drained == 0)
	report(t, "kill-nats-10s", sum, fails...)
}

// Scenario 3: kill -9 the order service mid-load and restart it; clients
// retry with their request id.
func TestKillOrderService(t *testing.T) {
	s := startSystem(t, options{})
	users := createUsers(t, s, 10)
	l := newLoad(t, s, users, 200, 20*time.Second)
	l.start()
	time.Sleep(3 * time.Second)
	s.orders[0].kill()
	time.Sleep(2 * time.Second)
	s.orders[0].restart(t)
	time.Sleep(4 * time.Second)
	l.finish()
	sum := l.ledger(s)
	var fails []string
	if len(sum.failed) > 0 {
		fails = append(fails, "requests failed although clients retried with their request id until the service was back")
	}
	if sum.retried == 0 {
		fails = append(fails, "no request needed a retry: the kill did not happen under load")
	}
	report(t, "kill-order-restart", sum, fails...)
}

// Scenario 4: slow, then broken, network between order and user.
func TestSlowAndBrokenNetwork(t *testing.T) {
	var proxy *toxiproxy.Proxy
	s := startSystem(t, options{
		userUpstream: func(addrs []string) string { proxy = newProxy(t, addrs[0]); return proxy.Listen },
		extra:        []string{"--upstream-timeout", "300ms"},
	})
	users := createUsers(t, s, 10)
	goroutines := metric(t, s.orders[0].admin, "go_goroutines")
	fds := metric(t, s.orders[0].admin, "process_open_fds")
	// over1s is how many observations of a histogram took over 1 s.
	over1s := func(admin, name string, labels ...string) float64 {
		b := buckets(t, admin, name, labels...) // one scrape: the load may be running
		return b["+Inf"] - b["1"]
	}
	// The order service's own view of its GetUser calls (the mesh client
	// histogram: the whole call, breaker and deadline included): how many
	// took over 1 s, i.e. waited for the network delay instead of ending
	// at their 300 ms deadline.
	callsOver1s := func() float64 {
		return over1s(s.orders[0].admin, "grpc_client_handling_seconds", `grpc_method="GetUser"`)
	}
	slowCallsBefore := callsOver1s()
	// The same count at each hop, from its own histogram: the gateway's
	// time for POST /api/v1/orders and the order service's for
	// CreateOrder. A request the client measured over the delay that no
	// hop did waited outside the system (in this process, which also runs
	// the load and the proxy, or in the kernel's queues).
	postOrders := []string{`method="POST"`, `route="/api/v1/orders"`}
	createOrder := []string{`grpc_method="CreateOrder"`}
	gatewaySlowBefore := over1s(s.gateways[0].admin, "http_request_duration_seconds", postOrders...)
	orderSlowBefore := over1s(s.orders[0].admin, "grpc_server_handling_seconds", createOrder...)
	l := newLoad(t, s, users, 200, 0)
	l.start()
	time.Sleep(2 * time.Second)

	addToxic(t, proxy, `{"name":"slow","type":"latency","stream":"downstream","attributes":{"latency":1000,"jitter":200}}`)
	slowFrom := time.Now()
	time.Sleep(5 * time.Second)
	slowTo := time.Now()
	time.Sleep(2 * time.Second) // calls sent in the slow window end (the delay is 1.2 s at most)
	gatewaySlow := over1s(s.gateways[0].admin, "http_request_duration_seconds", postOrders...) - gatewaySlowBefore
	orderSlow := over1s(s.orders[0].admin, "grpc_server_handling_seconds", createOrder...) - orderSlowBefore
	proxy.Toxics.ResetToxics(context.Background())
	addToxic(t, proxy, `{"name":"reset","type":"reset_peer","stream":"downstream","attributes":{"timeout":0}}`)
	time.Sleep(3 * time.Second)
	proxy.Toxics.ResetToxics(context.Background())
	time.Sleep(5 * time.Second)
	l.finish()
	time.Sleep(2 * time.Second)

	sum := l.ledger(s)
	afterG := metric(t, s.orders[0].admin, "go_goroutines")
	afterFDs := metric(t, s.orders[0].admin, "process_open_fds")
	var fails []string
	var slowLat []time.Duration
	var outliers []string
	l.mu.Lock()
	for _, o := range l.outcomes {
		if o.sent.After(slowFrom) && o.sent.Before(slowTo) {
			slowLat = append(slowLat, o.latency)
			if o.latency > 900*time.Millisecond && len(outliers) < 10 {
				outliers = append(outliers, fmt.Sprintf("sent at +%v: %v, status %d after %d attempts, request %s",
					o.sent.Sub(slowFrom).Round(time.Millisecond), o.latency.Round(time.Millisecond), o.code, o.attempts, o.requestID))
			}
		}
	}
	l.mu.Unlock()
	// The property is the order service's: none of its calls to the user
	// service waits out the network delay. End to end (a request's whole
	// trip through gateway, order service, PostgreSQL), p99 must stay
	// under the delay too. p99.9 end to end was the bound until one CI
	// run measured 1.96 s (the slowest one or two of about 1000, the rest
	// of the scenario clean): that cannot tell a call that waited from a
	// stall of the shared machine; the order service's histogram can, and
	// the slow requests are listed.
	if n := callsOver1s() - slowCallsBefore; n > 0 {
		fails = append(fails, fmt.Sprintf("%v GetUser calls took over 1 s: they waited for the 1 s network delay instead of their 300 ms deadline", n))
	}
	if p := percentile(slowLat, 0.99); p > 900*time.Millisecond {
		fails = append(fails, fmt.Sprintf("p99 latency %v end to end while the network was slow: requests waited for the 1 s delay (over 1 s by each hop's own measure: gateway %v, order service %v)", p, gatewaySlow, orderSlow))
	}
	if len(outliers) > 0 {
		t.Logf("requests over 900 ms while the network was slow (%d of %d shown):\n%s", len(outliers), len(slowLat), strings.Join(outliers, "\n"))
	}
	if afterG > goroutines+40 {
		fails = append(fails, fmt.Sprintf("goroutines %v → %v: pile-up", goroutines, afterG))
	}
	if afterFDs > fds+20 {
		fails = append(fails, fmt.Sprintf("open fds %v → %v: connection pile-up", fds, afterFDs))
	}
	for code, n := range sum.failed {
		fails = append(fails, fmt.Sprintf("%d requests failed with %d (known users should be served, degraded)", n, code))
	}
	sum.notes = fmt.Sprintf("p99 %v, p99.9 %v, over 1 s at the gateway %v and the order service %v, goroutines %v→%v, fds %v→%v", percentile(slowLat, 0.99).Round(time.Millisecond), percentile(slowLat, 0.999).Round(time.Millisecond), gatewaySlow, orderSlow, goroutines, afterG, fds, afterFDs)
	report(t, "slow-broken-network", sum, fails...)
}

// Scenario 5: rolling restart (SIGTERM) of every component, two replicas
// each, under load.
func TestRollingRestart(t *testing.T) {
	s := startSystem(t, options{replicas: 2})
	users := createUsers(t, s, 10)
	l := newLoad(t, s, users, 200, 10*time.Second)
	l.start()
	time.Sleep(2 * time.Second)
	for _, group := range [][]*component{s.users, s.orders, s.gateways} {
		for _, c := range group {
			c.term()
			c.restart(t)
			time.Sleep(time.Second)
		}
	}
	time.Sleep(2 * time.Second)
	l.finish()
	sum := l.ledger(s)
	var fails []string
	if len(sum.failed) > 0 {
		fails = append(fails, "requests failed during a rolling restart")
	}
	report(t, "rolling-restart", sum, fails...)
}

// Scenario 6: the database is unreachable for a while.
func TestDatabaseUnreachable(t *testing.T) {
	pg, err := url.Parse(testenv.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	var proxy *toxiproxy.Proxy
	s := startSystem(t, options{dbURL: func(u string) string {
		proxy = newProxy(t, pg.Host)
		return strings.Replace(u, pg.Host, proxy.Listen, 1)
	}})
	users := createUsers(t, s, 10)
	l := newLoad(t, s, users, 100, 0)
	l.start()
	time.Sleep(3 * time.Second)
	proxy.Stop()
	time.Sleep(5 * time.Second)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	time.Sleep(6 * time.Second)
	l.finish()
	sum := l.ledger(s)
	var fails []string
	l.mu.Lock()
	lateFailures := 0
	for _, o := range l.outcomes {
		if o.sent.After(back.Add(3*time.Second)) && o.code != http.StatusCreated {
			lateFailures++
		}
	}
	l.mu.Unlock()
	if sum.failed[500] > 0 {
		var internal []string
		for _, c := range append(append(append([]*component{}, s.users...), s.orders...), s.gateways...) {
			for _, line := range strings.Split(c.logs(), "\n") {
				if strings.Contains(line, "internal error") {
					internal = append(internal, c.name+": "+line)
				}
			}
		}
		fails = append(fails, fmt.Sprintf("%d requests got 500; an unreachable database must be 503:\n%s", sum.failed[500], strings.Join(internal, "\n")))
	}
	if sum.failed[503] == 0 {
		fails = append(fails, "no 503 while the database was unreachable")
	}
	if lateFailures > 0 {
		fails = append(fails, fmt.Sprintf("%d requests failed more than 3s after the database came back", lateFailures))
	}
	// After recovery, without restarting anything, writes succeed again.
	resp, err := http.Post("http://"+s.gateways[0].addr+"/api/v1/users", "application/json",
		strings.NewReader(`{"email":"after-`+uuid.NewString()[:6]+`@example.com","name":"After","password":"correct-horse"}`))
	if err != nil || resp.StatusCode != http.StatusCreated {
		fails = append(fails, fmt.Sprintf("write after recovery: %v %v", err, resp))
	}
	report(t, "database-unreachable-5s", sum, fails...)
}

// Scenario 9: a retry storm against a system that sheds load (as by
// default). For 5 s clients retry every failure at once — 429s
// included, up to 256 requests in flight, each retried in a tight loop —
// then for 5 s they back off as told (Retry-After). When the storm ends,
// ordinary traffic must be served again within seconds: the ledger stays
// clean (nothing acknowledged lost or doubled, one event per order) and
// no process falls over.
func TestRetryStorm(t *testing.T) {
	s := startSystem(t, options{}) // shedding as by default
	users := createUsers(t, s, 20)
	storm := newLoad(t, s, users, 2000, 15*time.Second)
	storm.mode.Store(retryImmediately)
	storm.start()
	time.Sleep(5 * time.Second)
	storm.mode.Store(retryAsTold)
	time.Sleep(5 * time.Second)
	storm.finish()
	ended := time.Now()

	calm := newLoad(t, s, users, 100, 0)
	calm.start()
	time.Sleep(8 * time.Second)
	calm.finish()
	// Recovered: from this moment on, every calm request was created in
	// under 500 ms.
	recovered := ended
	for _, o := range calm.outcomes {
		if (o.code != http.StatusCreated || o.latency > 500*time.Millisecond) && o.sent.After(recovered) {
			recovered = o.sent
		}
	}
	sum := storm.ledger(s)
	calmSum := calm.ledger(s)
	var attempts429, attempts int
	for code, n := range storm.attempts {
		attempts += n
		if code == http.StatusTooManyRequests {
			attempts429 += n
		}
	}
	var fails []string
	if sum.lost > 0 || sum.duplicated > 0 || calmSum.lost > 0 || calmSum.duplicated > 0 {
		fails = append(fails, "the ledger is not clean")
	}
	if after := recovered.Sub(ended); after > 5*time.Second {
		fails = append(fails, fmt.Sprintf("ordinary traffic was not served within 5 s of the storm's end (%v)", after.Round(time.Millisecond)))
	}
	for _, c := range append(append(s.users, s.orders...), s.gateways...) {
		if !c.alive() {
			fails = append(fails, c.name+" died")
		}
	}
	sum.notes = fmt.Sprintf("storm: %d attempts for %d requests, %d answered 429; calm traffic served %v after the storm (%d/%d created)",
		attempts, sum.sent, attempts429, recovered.Sub(ended).Round(time.Millisecond), calmSum.acked, calmSum.sent)
	report(t, "retry-storm", sum, fails...)
}
