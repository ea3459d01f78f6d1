//go:build chaos || cluster

package chaos_test

import (
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/google/uuid"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trellis-mesh/trellis/internal/app"

	sysproc "github.com/trellis-mesh/trellis/internal/proc"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh/identity"
)

var trellisBin string

func TestMain(m *testing.M) { testenv.RunWithTrellis(m, &trellisBin) }

// proc is one OS process of the system under test, which a scenario may
// kill and start again with the same arguments.
type proc struct {
	t    *testing.T
	name string
	args []string
	p    *sysproc.Proc
	log  *testenv.SyncBuffer
	// bin is the program (default: by name, see binary); ns, when set, is
	// the network namespace (host) it runs in.
	bin, ns string
}

func startProc(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	return startProcIn(t, "", name, bin, args...)
}

// startProcIn starts bin (or, when empty, the program binary names) in
// network namespace ns ("": this one).
func startProcIn(t *testing.T, ns, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, args: args, bin: bin, ns: ns}
	p.start()
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *proc) start() {
	p.log = &testenv.SyncBuffer{}
	bin, args := p.binary(), p.args
	if p.ns != "" {
		// ip netns exec execs the program: the process is the same.
		bin, args = "ip", append([]string{"netns", "exec", p.ns, bin}, args...)
	}
	var err error
	if p.p, err = sysproc.Start(p.name, bin, p.log, args...); err != nil {
		p.t.Fatal(err)
	}
}

func (p *proc) binary() string {
	switch {
	case p.bin != "":
		return p.bin
	case p.name == "nats":
		return natsServerBin()
	}
	return trellisBin
}

// signal sends sig (SIGSTOP: a hung host; SIGCONT: it wakes).
func (p *proc) signal(sig syscall.Signal) {
	if err := p.p.Cmd.Process.Signal(sig); err != nil {
		p.t.Errorf("signal %s: %v", p.name, err)
	}
}

// kill is kill -9.
func (p *proc) kill() { p.p.Kill() }

// alive reports whether the process is still running.
func (p *proc) alive() bool {
	select {
	case <-p.p.Exited():
		return false
	default:
		return true
	}
}

// term is a graceful stop (SIGTERM) waiting for the exit; not exiting
// within 20 s is a failure of the scenario.
func (p *proc) term() {
	_ = p.p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.p.Exited():
	case <-time.After(20 * time.Second):
		p.t.Errorf("%s did not exit within 20s of SIGTERM", p.name)
		p.kill()
	}
}

func natsServerBin() string {
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p
	}
	return "/usr/sbin/nats-server"
}

// system is the processes of one scenario.
type system struct {
	t        *testing.T
	idDir    string // the development CA every component shares
	natsConf string // nats-server configuration: TLS and per-identity permissions
	dbURL    string
	natsURL  string
	natsDir  string
	natsAddr string
	nats     *proc
	users    []*component
	orders   []*component
	gateways []*component

	// tokens are the access tokens of the users createUsers made, by id;
	// adminToken is an admin's (see admin).
	tokens     sync.Map
	adminOnce  sync.Once
	adminToken string
}

// token is the access token of user id (made by createUsers), or "".
func (s *system) token(id string) string {
	v, _ := s.tokens.Load(id)
	tok, _ := v.(string)
	return tok
}

// signIn signs email in through the first gateway and returns its access
// token.
func (s *system) signIn(t *testing.T, email string) string {
	t.Helper()
	resp, err := http.Post("http://"+s.gateways[0].addr+"/api/v1/auth:signIn", "application/json",
		strings.NewReader(fmt.Sprintf(`{"email":%q,"password":"correct-horse"}`, email)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct{ AccessToken string }
	_ = json.NewDecoder(resp.Body).Decode(&r)
	if resp.StatusCode != http.StatusOK || r.AccessToken == "" {
		t.Fatalf("sign in %s: %d", email, resp.StatusCode)
	}
	return r.AccessToken
}

// admin is the access token of an admin, made as an operator would: sign
// up, `trellis users grant-admin` on the user service's database, sign in.
func (s *system) admin(t *testing.T) string {
	t.Helper()
	s.adminOnce.Do(func() {
		email := "admin-" + uuid.NewString()[:8] + "@example.com"
		resp, err := http.Post("http://"+s.gateways[0].addr+"/api/v1/users", "application/json",
			strings.NewReader(fmt.Sprintf(`{"email":%q,"name":"Admin","password":"correct-horse"}`, email)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("sign up the admin: %d", resp.StatusCode)
		}
		if out, err := exec.Command(trellisBin, "users", "grant-admin", "--email", email, "--database-url", s.dbURL).CombinedOutput(); err != nil {
			t.Fatalf("grant-admin: %v\n%s", err, out)
		}
		s.adminToken = s.signIn(t, email)
	})
	return s.adminToken
}

// post sends a JSON body with token as its bearer token ("" for none).
func post(c *http.Client, url, body, token string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return c.Do(req)
}

type component struct {
	*proc
	addr, admin string
}

// ready waits for the component's /readyz.
func (c *component) ready(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if !c.alive() {
			t.Fatalf("%s exited before it was ready:\n%s", c.name, c.logs())
		}
		resp, err := http.Get("http://" + c.admin + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not ready within 30s: %s\n%s", c.name, body, c.logs())
			}
		} else if time.Now().After(deadline) {
			t.Fatalf("%s not ready within 30s: %v\n%s", c.name, err, c.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logs returns what the process printed.
func (p *proc) logs() string {
	return p.log.String()
}

// restart starts the component again with the same flags.
func (c *component) restart(t *testing.T) {
	c.start()
	c.ready(t)
}

type options struct {
	replicas     int
	userUpstream func(userAddrs []string) string // default: the user replicas
	dbURL        func(string) string             // how services reach PostgreSQL
	extra        []string                        // extra flags for order
	all          []string                        // extra flags for every component
}

// issue is an SVID for spiffe://trellis.local/<path> from the system's CA.
func (s *system) issue(path string) (*x509svid.SVID, *x509bundle.Bundle) {
	svid, bundle, err := identity.IssueFromDir(s.idDir, spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain), path, time.Hour)
	if err != nil {
		s.t.Fatal(err)
	}
	return svid, bundle
}

// tlsAs is the TLS configuration of the identity path, accepting the
// Trellis components of the trust domain as servers.
func (s *system) tlsAs(path string) *tls.Config {
	svid, bundle := s.issue(path)
	return identity.TLSConfig(identity.Static(svid, bundle), identity.AuthorizeComponent(spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)))
}

// natsAs connects to the system's NATS as the identity path.
func (s *system) natsAs(path string, opts ...nats.Option) (*nats.Conn, error) {
	return nats.Connect(s.natsURL, append([]nats.Option{nats.Secure(s.tlsAs(path)), nats.MaxReconnects(0)}, opts...)...)
}

// newDatabase creates a database of its own on the machine's PostgreSQL.
func newDatabase(t *testing.T) string {
	t.Helper()
	admin, err := sql.Open("pgx", testenv.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	name := "chaos_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("create database on the machine's PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		a, err := sql.Open("pgx", testenv.PostgresURL())
		if err == nil {
			_, _ = a.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
			a.Close()
		}
	})
	return strings.Replace(testenv.PostgresURL(), "/test?", "/"+name+"?", 1)
}

// startNATS runs a nats-server process (the machine's binary) with
// JetStream on a fixed address and store, so it can be killed and started
// again where clients expect it. It is secured as docs/security.md says:
// TLS with a certificate from the system's CA, client certificates mapped
// to per-identity permissions (the configuration trellis identity
// nats-config prints).
func (s *system) startNATS() {
	if s.natsConf == "" {
		dir := s.t.TempDir()
		svid, bundle := s.issue("trellis/nats")
		if err := identity.WriteFiles(dir, svid, bundle); err != nil {
			s.t.Fatal(err)
		}
		s.natsConf = filepath.Join(dir, "nats.conf")
		conf := app.NATSServerConfig(identity.DefaultTrustDomain, "", filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid-key.pem"), filepath.Join(dir, "bundle.pem"))
		if err := os.WriteFile(s.natsConf, []byte(conf), 0o600); err != nil {
			s.t.Fatal(err)
		}
	}
	s.nats = startProc(s.t, "nats", "", "-c", s.natsConf, "-a", "127.0.0.1", "-p", strings.Split(s.natsAddr, ":")[1], "-js", "-sd", s.natsDir)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if nc, err := s.natsAs("client/" + app.EventsReader); err == nil {
			nc.Close()
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("nats-server did not start:\n%s", s.nats.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func startSystem(t *testing.T, o options) *system {
	t.Helper()
	if o.replicas == 0 {
		o.replicas = 1
	}
	s := &system{t: t, dbURL: newDatabase(t), natsDir: t.TempDir(), natsAddr: testenv.FreeAddr(t), idDir: t.TempDir()}
	s.natsURL = "tls://" + s.natsAddr
	s.startNATS()
	dbURL := s.dbURL
	if o.dbURL != nil {
		dbURL = o.dbURL(s.dbURL)
	}
	common := []string{"--database-url", dbURL, "--nats-url", s.natsURL, "--log-level", "warn", "--bcrypt-cost", "4",
		"--breaker-timeout", "2s", "--reconcile-interval", "500ms", "--drain-timeout", "10s",
		"--identity-dir", s.idDir, // one development CA: every hop is mTLS, as by default
		// The load comes from one address; a real one comes from many.
		"--rate-read", "0", "--rate-write", "0", "--rate-auth", "0", "--http-max-conns-per-client", "0", "--grpc-max-conns-per-client", "0"}
	common = append(common, o.all...)
	start := func(name string, args ...string) *component {
		c := &component{addr: testenv.FreeAddr(t), admin: testenv.FreeAddr(t)}
		all := append([]string{"run", "--target", name, "--admin-addr", c.admin}, common...)
		switch name {
		case "user":
			all = append(all, "--user-addr", c.addr)
		case "order":
			all = append(all, "--order-addr", c.addr)
		case "gateway":
			all = append(all, "--http-addr", c.addr)
		}
		c.proc = startProc(t, name, trellisBin, append(all, args...)...)
		return c
	}
	var userAddrs, orderAddrs []string
	for range o.replicas {
		u := start("user")
		s.users = append(s.users, u)
		userAddrs = append(userAddrs, u.addr)
	}
	userUpstream := strings.Join(userAddrs, ",")
	if o.userUpstream != nil {
		userUpstream = o.userUpstream(userAddrs)
	}
	for _, u := range s.users {
		u.ready(t)
	}
	for range o.replicas {
		c := start("order", append([]string{"--user-upstream", userUpstream}, o.extra...)...)
		s.orders = append(s.orders, c)
		orderAddrs = append(orderAddrs, c.addr)
	}
	for _, c := range s.orders {
		c.ready(t)
	}
	for range o.replicas {
		g := start("gateway", "--user-upstream", strings.Join(userAddrs, ","), "--order-upstream", strings.Join(orderAddrs, ","))
		s.gateways = append(s.gateways, g)
	}
	for _, g := range s.gateways {
		g.ready(t)
	}
	return s
}

// metric reads one sample from a component's /metrics: the sum of the
// series of name whose labels contain every given label="value" (-1 when
// the component does not answer).
func metric(t *testing.T, admin, name string, labels ...string) float64 {
	t.Helper()
	v, err := sysproc.Metric(admin, name, labels...)
	if err != nil {
		return -1
	}
	return v
}

// ---- load and ledger ----

// outcome is the final result of one logical request (after client retries).
type outcome struct {
	sent      time.Time
	requestID string
	orderID   string
	code      int // final HTTP status; 0 for a transport error
	attempts  int
	latency   time.Duration // of the final attempt
	status    string
	ids       []string // order ids returned by every successful attempt
	body      string   // the final answer's body when it failed (the ledger quotes one)
}

// load sends CreateOrder through the gateways at a fixed rate (open loop),
// retrying each logical request with the same requestId on 5xx and
// connection errors, across gateways, until it succeeds or retryFor ends.
type load struct {
	t *testing.T
	s *system
	// mode is how clients retry: retryNormal (5xx and connection errors
	// after 50–150 ms; 429 after its Retry-After, as HTTP asks of a
	// client told the server is overloaded), retryImmediately (every failure, 429 included, at
	// once: a retry storm) or retryAsTold (every failure, after the
	// answer's Retry-After, else 100 ms).
	mode     atomic.Int32
	gateways []string
	users    []string
	rate     int
	retryFor time.Duration

	mu       sync.Mutex
	outcomes []*outcome
	attempts map[int]int // status of every attempt, 0 = transport error
	began    time.Time
	ran      time.Duration // from start to finish
	// failures counts the attempts that did not succeed, per second of
	// the load and status: the timeline a failing scenario prints.
	failures map[int]map[int]int
	stop     chan struct{}
	wg       sync.WaitGroup
	client   *http.Client
}

func newLoad(t *testing.T, s *system, users []string, rate int, retryFor time.Duration) *load {
	var gws []string
	for _, g := range s.gateways {
		gws = append(gws, "http://"+g.addr)
	}
	return &load{t: t, s: s, gateways: gws, users: users, rate: rate, retryFor: retryFor, attempts: map[int]int{}, failures: map[int]map[int]int{},
		stop: make(chan struct{}), client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
}

func (l *load) start() {
	l.began = time.Now()
	l.wg.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(l.rate))
		defer tick.Stop()
		sem := make(chan struct{}, 256)
		var inflight sync.WaitGroup
		defer inflight.Wait()
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			select {
			case sem <- struct{}{}:
			default:
				continue // more than 256 in flight: the system is saturated
			}
			inflight.Go(func() {
				defer func() { <-sem }()
				l.one(i)
			})
		}
	})
}

func (l *load) finish() { close(l.stop); l.wg.Wait(); l.ran = time.Since(l.began) }

// Retry modes of a load (load.mode).
const (
	retryNormal = iota
	retryImmediately
	retryAsTold
)

func (l *load) one(i int) {
	o := &outcome{requestID: uuid.NewString(), sent: time.Now()}
	user := l.users[i%len(l.users)]
	body := fmt.Sprintf(`{"userId":%q,"requestId":%q,"items":[{"productId":"p%d","quantity":1,"unitPrice":{"currencyCode":"EUR","amountMinor":"100"}}]}`, user, o.requestID, i%7)
	deadline := time.Now().Add(l.retryFor)
	for attempt := 0; ; attempt++ {
		gw := l.gateways[(i+attempt)%len(l.gateways)]
		start := time.Now()
		resp, err := post(l.client, gw+"/api/v1/orders", body, l.s.token(user))
		o.attempts++
		o.latency = time.Since(start)
		code := 0
		retryAfter := 100 * time.Millisecond
		if err == nil {
			code = resp.StatusCode
			if ra, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && ra > 0 {
				retryAfter = time.Duration(ra) * time.Second
			}
			var r struct {
				Order struct{ ID, Status string } `json:"order"`
			}
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			_ = json.Unmarshal(b, &r)
			if code == http.StatusCreated {
				o.orderID, o.status = r.Order.ID, r.Order.Status
				o.ids = append(o.ids, r.Order.ID)
			} else {
				o.body = string(b)
				if c := resp.Header.Get("WWW-Authenticate"); c != "" {
					o.body += " (WWW-Authenticate: the gateway's own check)"
				}
			}
		}
		o.code = code
		l.mu.Lock()
		l.attempts[code]++
		if code != http.StatusCreated {
			sec := int(start.Sub(l.began) / time.Second)
			if l.failures[sec] == nil {
				l.failures[sec] = map[int]int{}
			}
			l.failures[sec][code]++
		}
		l.mu.Unlock()
		mode := l.mode.Load()
		if code == http.StatusCreated || code != 0 && code < 500 && code != http.StatusTooManyRequests || time.Now().After(deadline) {
			break
		}
		switch {
		case mode == retryImmediately:
		case mode == retryAsTold, code == http.StatusTooManyRequests:
			time.Sleep(retryAfter)
		default:
			time.Sleep(time.Duration(50+rand.IntN(100)) * time.Millisecond)
		}
	}
	l.mu.Lock()
	l.outcomes = append(l.outcomes, o)
	l.mu.Unlock()
}

// summary is one scenario's ledger.
type summary struct {
	sent, acked, lost, duplicated                                       int
	failed                                                              map[int]int // final status of failed requests
	retried                                                             int
	eventsExpected, eventsDelivered, eventsDuplicated, duplicateApplied int
	notes                                                               string
	sample                                                              string // one failed request's answer
	timeline                                                            string // failed attempts per second of the load
}

// ledger checks every acknowledged order against the database and every
// row against JetStream.
func (l *load) ledger(s *system) summary {
	t := l.t
	sum := summary{failed: map[int]int{}}
	db, err := sql.Open("pgx", s.dbURL+"&search_path=trellis_order")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	secs := make([]int, 0, len(l.failures))
	for sec := range l.failures {
		secs = append(secs, sec)
	}
	sort.Ints(secs)
	var tl []string
	for _, sec := range secs {
		var byCode []string
		for code, n := range l.failures[sec] {
			byCode = append(byCode, fmt.Sprintf("%d×%d", code, n))
		}
		sort.Strings(byCode)
		tl = append(tl, fmt.Sprintf("%ds: %s", sec, strings.Join(byCode, " ")))
	}
	sum.timeline = strings.Join(tl, "; ")
	for _, o := range l.outcomes {
		sum.sent++
		if o.attempts > 1 {
			sum.retried++
		}
		if o.code != http.StatusCreated {
			sum.failed[o.code]++
			if sum.sample == "" {
				sum.sample = fmt.Sprintf("%d %s", o.code, o.body)
			}
			continue
		}
		sum.acked++
		for _, id := range o.ids {
			if id != o.orderID {
				t.Errorf("request %s answered with two orders: %v", o.requestID, o.ids)
			}
		}
		var n int
		var id string
		if err := db.QueryRow("SELECT count(*), max(id) FROM orders WHERE idempotency_key = $1", o.requestID).Scan(&n, &id); err != nil {
			t.Fatal(err)
		}
		switch {
		case n == 0:
			sum.lost++
			t.Errorf("acknowledged order %s (request %s) is not in the database", o.orderID, o.requestID)
		case n > 1:
			sum.duplicated++
		case id != o.orderID:
			sum.duplicated++
			t.Errorf("request %s: acknowledged order %s, database has %s", o.requestID, o.orderID, id)
		}
	}
	// Events: one order.created per order row, nothing twice.
	var rows int
	if err := db.QueryRow("SELECT count(*) FROM orders").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	sum.eventsExpected = rows
	nc, err := s.natsAs("client/" + app.EventsReader)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	deadline := time.Now().Add(30 * time.Second)
	for {
		msgs, distinct := testenv.EventCount(t, js, "TRELLIS_ORDER", "trellis.order.v1.created")
		sum.eventsDelivered, sum.eventsDuplicated = distinct, msgs-distinct
		if distinct >= rows || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Consumer side: every user event the order service applied, it
	// applied once (processed_events is unique per event id).
	var processed, distinctProcessed int
	if err := db.QueryRow("SELECT count(*), count(DISTINCT event_id) FROM processed_events").Scan(&processed, &distinctProcessed); err != nil {
		t.Fatal(err)
	}
	sum.duplicateApplied = processed - distinctProcessed
	return sum
}

// report prints the scenario's one line and fails on loss or duplication.
func report(t *testing.T, name string, s summary, extraFail ...string) {
	t.Helper()
	codes := make([]string, 0, len(s.failed))
	for c, n := range s.failed {
		codes = append(codes, fmt.Sprintf("%d:%d", c, n))
	}
	sort.Strings(codes)
	verdict := "PASS"
	if s.lost > 0 || s.duplicated > 0 || s.eventsDuplicated > 0 || s.duplicateApplied > 0 || s.eventsDelivered != s.eventsExpected || len(extraFail) > 0 || t.Failed() {
		verdict = "FAIL"
	}
	line := fmt.Sprintf("chaos %-22s sent=%d acked=%d failed={%s} retried=%d lost=%d duplicated=%d | events expected=%d delivered=%d duplicated=%d dup-applied=%d | %s | %s",
		name, s.sent, s.acked, strings.Join(codes, ","), s.retried, s.lost, s.duplicated,
		s.eventsExpected, s.eventsDelivered, s.eventsDuplicated, s.duplicateApplied, orDash(s.notes), verdict)
	fmt.Println(line)
	if f := os.Getenv("CHAOS_RESULTS"); f != "" {
		if fh, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(fh, line)
			fh.Close()
		}
	}
	for _, e := range extraFail {
		t.Error(e)
	}
	if s.sample != "" {
		t.Logf("a failed request's answer: %s", s.sample)
	}
	if verdict == "FAIL" && s.timeline != "" {
		t.Logf("failed attempts per second of the load (status×count; 0 = transport error): %s", s.timeline)
	}
	if verdict == "FAIL" && !t.Failed() {
		t.Errorf("ledger: %s", line)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// createUsers makes n users through the gateway, signs each in (its token:
// s.token) and waits until the order service's replica has applied their
// events.
func createUsers(t *testing.T, s *system, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		email := fmt.Sprintf("chaos%d-%s@example.com", i, uuid.NewString()[:6])
		body := fmt.Sprintf(`{"email":%q,"name":"Chaos","password":"correct-horse"}`, email)
		resp, err := http.Post("http://"+s.gateways[0].addr+"/api/v1/users", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var r struct{ User struct{ ID string } }
		_ = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("create user: %d", resp.StatusCode)
		}
		ids = append(ids, r.User.ID)
		s.tokens.Store(r.User.ID, s.signIn(t, email))
	}
	applied := func() float64 {
		sum := 0.0
		for _, o := range s.orders { // replicas share the durable consumer
			sum += metric(t, o.admin, "trellis_consumer_handled_total", `result="ok"`)
		}
		return sum
	}
	// Generous: on the cluster suite's fresh hosts the consumer's first
	// connection to JetStream can take many seconds (CI: over 15).
	deadline := time.Now().Add(45 * time.Second)
	for applied() < float64(n) {
		if time.Now().After(deadline) {
			t.Fatal("the order service's replica did not learn the users")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return ids
}

// buckets reads a histogram's cumulative buckets (le -> count) from
// /metrics, summed over the series matching labels.
func buckets(t *testing.T, admin, name string, labels ...string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name+"_bucket{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		i := strings.Index(line, `le="`)
		if !ok || i < 0 {
			continue
		}
		le := line[i+4 : i+4+strings.IndexByte(line[i+4:], '"')]
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		out[le] += v
	}
	return out
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// proxy is a toxiproxy proxy in the test process.
func newProxy(t *testing.T, upstream string) *toxiproxy.Proxy {
	t.Helper()
	return newProxyAt(t, testenv.FreeAddr(t), upstream)
}

// newProxyAt is newProxy listening on listen.
func newProxyAt(t *testing.T, listen, upstream string) *toxiproxy.Proxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "p-"+uuid.NewString()[:6], listen, upstream)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p
}

func addToxic(t *testing.T, p *toxiproxy.Proxy, json string) {
	t.Helper()
	if _, err := p.Toxics.AddToxicJson(strings.NewReader(json)); err != nil {
		t.Fatal(err)
	}
}

// breakerWatch samples the order service's breaker on the user service
// and records when it opened and when it closed again.
type breakerWatch struct {
	mu                 sync.Mutex
	states             []string
	openedAt, closedAt time.Time
	stop               chan struct{}
	done               chan struct{}
}

// watchBreaker polls the breaker's state every 100 ms. Not faster: each
// poll is a whole /metrics scrape of the process under test, and at 10 ms
// two watchers made 200 scrapes a second of the order replicas — load the
// scenarios did not mean to add, on a two-core machine where the order
// replicas' CreateOrder must stay under the gateway's 1 s timeout. The
// bounds watched are seconds.
func watchBreaker(t *testing.T, admin string) *breakerWatch {
	w := &breakerWatch{stop: make(chan struct{}), done: make(chan struct{})}
	names := map[float64]string{0: "closed", 1: "half-open", 2: "open"}
	go func() {
		defer close(w.done)
		last := -1.0
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			v := metric(t, admin, "trellis_breaker_state", `upstream="user"`)
			if v < 0 || v == last {
				continue
			}
			w.mu.Lock()
			w.states = append(w.states, names[v])
			if v == 2 && w.openedAt.IsZero() {
				w.openedAt = time.Now()
			}
			if v == 0 && !w.openedAt.IsZero() {
				w.closedAt = time.Now()
			}
			w.mu.Unlock()
			last = v
		}
	}()
	return w
}

func (w *breakerWatch) finish() string {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	// Collapse repeats of open/half-open cycles for the report line.
	return strings.Join(w.states, "→")
}

func (w *breakerWatch) state() (opened, closed time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.openedAt, w.closedAt
}
