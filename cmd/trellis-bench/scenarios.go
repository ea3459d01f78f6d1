package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/valyala/fasthttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/outbox/outboxbench"
	"github.com/trellis-mesh/trellis/mesh/identity"
)

// httpError is a non-2xx HTTP answer.
type httpError struct{ status string }

func (e httpError) Error() string { return "HTTP " + e.status }

func dial(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// httpClient is the REST load generator's client: fasthttp's, as the
// bombardier load generator uses, because on a 2-core machine the
// generator shares the CPUs with the system it measures, and net/http's
// client costs about three times the CPU per request of a gRPC client
// (measured: 32 vs 10 µs per GetUser), which would be charged to the
// gateway. Connections are kept alive, one per concurrent caller.
var httpClient = &fasthttp.Client{MaxConnsPerHost: 1024, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}

// httpDo sends one request and wants the status want; token, when given,
// is sent as the bearer token.
func httpDo(_ context.Context, method, url, body string, want int, token ...string) error {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(method)
	if len(token) > 0 {
		req.Header.Set("Authorization", "Bearer "+token[0])
	}
	req.SetRequestURI(url)
	if body != "" {
		req.Header.SetContentType("application/json")
		req.SetBodyString(body)
	}
	if err := httpClient.DoTimeout(req, resp, 10*time.Second); err != nil {
		return httpError{status: "transport"}
	}
	if resp.StatusCode() != want {
		return httpError{status: strconv.Itoa(resp.StatusCode())}
	}
	return nil
}

func createUser(ctx context.Context, c userv1.UserServiceClient) (string, error) {
	r, err := c.CreateUser(ctx, &userv1.CreateUserRequest{Email: "b" + uuid.NewString()[:12] + "@example.com", Name: "Bench", Password: "correct-horse"})
	if err != nil {
		return "", err
	}
	return r.GetUser().GetId(), nil
}

// signUp creates a user over conn (a user service) and signs it in; it
// returns the user's id and access token.
func signUp(ctx context.Context, conn grpc.ClientConnInterface) (id, token string, err error) {
	email := "b" + uuid.NewString()[:12] + "@example.com"
	r, err := userv1.NewUserServiceClient(conn).CreateUser(ctx, &userv1.CreateUserRequest{Email: email, Name: "Bench", Password: "correct-horse"})
	if err != nil {
		return "", "", err
	}
	in, err := userv1.NewAuthServiceClient(conn).SignIn(ctx, &userv1.SignInRequest{Email: email, Password: "correct-horse"})
	if err != nil {
		return "", "", err
	}
	return r.GetUser().GetId(), in.GetAccessToken(), nil
}

// signUpAt is signUp on a connection of its own to the user service at
// addr.
func signUpAt(ctx context.Context, addr string) (id, token string, err error) {
	conn, err := dial(addr)
	if err != nil {
		return "", "", err
	}
	defer conn.Close()
	return signUp(ctx, conn)
}

// bearer is a call option sending token (per-RPC credentials, the same
// cost on every system compared), and the user's id as x-user-id (read
// only by scenario 7's baseline; the same bytes go to every system).
func bearer(token string, userID ...string) grpc.CallOption {
	md := map[string]string{"authorization": "Bearer " + token}
	if len(userID) > 0 {
		md["x-user-id"] = userID[0]
	}
	return grpc.PerRPCCredentials(bearerToken(md))
}

type bearerToken map[string]string

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return b, nil
}

func (bearerToken) RequireTransportSecurity() bool { return false }

// row is one line of the report: a measurement beside its baseline.
type row struct {
	Scenario  string           `json:"scenario"`
	Profile   string           `json:"profile"`
	Name      string           `json:"name"`
	Baseline  bool             `json:"baseline"`
	Result    *result          `json:"result"`
	Processes map[string]usage `json:"processes,omitempty"`
	Note      string           `json:"note,omitempty"`
}

type report struct {
	Machine string             `json:"machine"`
	Profile string             `json:"profile"`
	Started time.Time          `json:"started"`
	Rows    []row              `json:"rows"`
	Ratios  map[string]float64 `json:"ratios"`
	Floors  map[string]float64 `json:"floors"`
	Failed  []string           `json:"failed,omitempty"`
}

type runner struct {
	bin      string
	tmp      string
	quick    bool
	rounds   int
	dur      time.Duration
	requests int64
	rep      *report
	conc     int
	profile  string
	protect  []string // scenario 8's protected system's extra flags
	baseRate int      // scenario 8's 1× rate; 0: found by the knee search
	cpuLimit float64  // scenario 8's system in a cgroup of this many CPUs; 0: pinned (splitCPUs)
}

// warmup is how long each target is called before it is measured.
var warmup = bounds{d: time.Second}

// bounds is how long each measured load run lasts.
func (r *runner) bounds() bounds { return bounds{d: r.dur, n: r.requests} }

func (r *runner) add(scenario, name string, baseline bool, res *result, procs map[string]*proc, note string) {
	u := map[string]usage{}
	for k, p := range procs {
		u[k] = p.Usage()
	}
	r.addUsage(scenario, name, baseline, res, u, note)
}

// addUsage is add with the processes' usage already read.
func (r *runner) addUsage(scenario, name string, baseline bool, res *result, u map[string]usage, note string) {
	r.rep.Rows = append(r.rep.Rows, row{Scenario: scenario, Profile: r.profile, Name: name, Baseline: baseline, Result: res, Processes: u, Note: note})
}

// comparison is what interleaved rounds of a baseline and a candidate
// measured: the last round's results and the medians over all rounds.
type comparison struct {
	base, cand *result
	ratios     []float64 // candidate/baseline throughput, per round
	p50        float64   // candidate/baseline p50, median
	// CPU µs per request of each side's processes, medians.
	baseCPU, candCPU float64
}

func (c comparison) ratio() float64 { return median(c.ratios) }

// cpuRatio is baseline/candidate CPU per request: like the throughput
// ratio, 1 means as cheap as the baseline.
func (c comparison) cpuRatio() float64 { return c.baseCPU / c.candCPU }

// compare alternates closed-loop runs of base and cand, r.rounds times,
// reading the CPU of each side's processes around its runs.
func (r *runner) compare(ctx context.Context, base call, baseProcs []*proc, cand call, candProcs []*proc) comparison {
	var c comparison
	var p50s, baseCPU, candCPU []float64
	for range r.rounds {
		c.base = measured(func() *result { return closedLoop(ctx, r.conc, r.bounds(), base) }, baseProcs...)
		c.cand = measured(func() *result { return closedLoop(ctx, r.conc, r.bounds(), cand) }, candProcs...)
		c.ratios = append(c.ratios, c.cand.Throughput/c.base.Throughput)
		p50s = append(p50s, c.cand.P50ms/c.base.P50ms)
		baseCPU, candCPU = append(baseCPU, c.base.ServerCPUus), append(candCPU, c.cand.ServerCPUus)
	}
	c.p50, c.baseCPU, c.candCPU = median(p50s), median(baseCPU), median(candCPU)
	return c
}

// suffix tells the split profile's ratios from the all-in-one ones.
func (r *runner) suffix() string {
	if strings.HasPrefix(r.profile, "split") {
		return "_split"
	}
	return ""
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// Scenario 1: unary GetUser, bare grpc-go server vs the Trellis chain,
// closed loop, rounds interleaved, median throughput ratio.
func (r *runner) chain(ctx context.Context) error {
	bareAddr := freeAddr()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bare, err := start("bare", self, "serve-bare", "--addr", bareAddr, "--data-dir", filepath.Join(r.tmp, "bare"))
	if err != nil {
		return err
	}
	defer bare.stop()
	mesh, err := runTrellis(r.bin, "trellis-user", filepath.Join(r.tmp, "mesh"), "--target", "user,order")
	if err != nil {
		return err
	}
	defer mesh.stop()
	if err := waitTCP(bareAddr); err != nil {
		return err
	}
	get, closeAll, err := getUserCalls(ctx, map[string]func() (*grpc.ClientConn, error){
		"bare": func() (*grpc.ClientConn, error) { return dial(bareAddr) },
		"mesh": func() (*grpc.ClientConn, error) { return dial(mesh.user) },
	})
	if err != nil {
		return err
	}
	defer closeAll()
	closedLoop(ctx, r.conc, warmup, get("bare")) // warm up
	closedLoop(ctx, r.conc, warmup, get("mesh"))
	c := r.compare(ctx, get("bare"), []*proc{bare}, get("mesh"), []*proc{mesh.proc})
	r.add("1 unary GetUser", "bare grpc-go", true, c.base, map[string]*proc{"bare": bare}, "")
	r.add("1 unary GetUser", "Trellis mesh chain", false, c.cand, map[string]*proc{"trellis": mesh.proc},
		fmt.Sprintf("throughput ratio median of %d interleaved rounds: %.3f (rounds %v); server CPU per call %.1f vs %.1f µs",
			r.rounds, c.ratio(), round3(c.ratios), c.candCPU, c.baseCPU))
	r.rep.Ratios["chain_throughput"] = c.ratio()
	r.rep.Ratios["chain_server_cpu"] = c.cpuRatio()
	return nil
}

// Scenario 7: what verifying access tokens costs. Unary GetUser with the
// user's token against two bare servers over the same handlers: one does
// not look at the token and takes the caller from a header (as behind a
// proxy that authenticated it: no verification at all), one verifies as
// Trellis does (ES256 with cached keys, verified
// tokens remembered). Interleaved rounds, median throughput ratio.
func (r *runner) tokens(ctx context.Context) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	servers := map[string]*proc{}
	dials := map[string]func() (*grpc.ClientConn, error){}
	for _, mode := range []string{"none", "cached"} {
		addr := freeAddr()
		p, err := start("bare-"+mode, self, "serve-bare", "--addr", addr, "--verify", mode, "--data-dir", filepath.Join(r.tmp, "tok-"+mode))
		if err != nil {
			return err
		}
		defer p.stop()
		if err := waitTCP(addr); err != nil {
			return err
		}
		servers[mode] = p
		dials[mode] = func() (*grpc.ClientConn, error) { return dial(addr) }
	}
	get, closeAll, err := getUserCalls(ctx, dials)
	if err != nil {
		return err
	}
	defer closeAll()
	closedLoop(ctx, r.conc, warmup, get("none"))
	closedLoop(ctx, r.conc, warmup, get("cached"))
	c := r.compare(ctx, get("none"), []*proc{servers["none"]}, get("cached"), []*proc{servers["cached"]})
	r.add("7 token verification: unary GetUser", "not verified (caller from a header)", true, c.base, map[string]*proc{"bare": servers["none"]}, "")
	r.add("7 token verification: unary GetUser", "verified (ES256, cached keys and tokens)", false, c.cand, map[string]*proc{"bare": servers["cached"]},
		fmt.Sprintf("throughput ratio median of %d interleaved rounds: %.3f (rounds %v); server CPU per call %.1f vs %.1f µs",
			r.rounds, c.ratio(), round3(c.ratios), c.candCPU, c.baseCPU))
	r.rep.Ratios["token_verification_throughput"] = c.ratio()
	return nil
}

// Scenario 6: what security costs. Unary GetUser against two identical
// trellis processes, one as by default (mTLS 1.3 with SPIFFE identities,
// the authorization policy) and one with --insecure-plaintext; closed
// loop on long-lived connections, rounds interleaved, median throughput
// ratio. The handshake is measured apart: new connections, each making
// one call, one after the other (median time per connection).
func (r *runner) mtls(ctx context.Context) error {
	plain, err := runTrellis(r.bin, "trellis-plaintext", filepath.Join(r.tmp, "plain"), "--target", "user,order")
	if err != nil {
		return err
	}
	defer plain.stop()
	secureDir := filepath.Join(r.tmp, "secure")
	secure, err := runSecure(r.bin, "trellis-mtls", secureDir, "--target", "user,order")
	if err != nil {
		return err
	}
	defer secure.stop()
	creds, err := clientCredentials(filepath.Join(secureDir, "identity"))
	if err != nil {
		return err
	}
	dials := map[string]func() (*grpc.ClientConn, error){
		"plain": func() (*grpc.ClientConn, error) { return dial(plain.user) },
		"secure": func() (*grpc.ClientConn, error) {
			return grpc.NewClient(secure.user, grpc.WithTransportCredentials(creds))
		},
	}
	get, closeAll, err := getUserCalls(ctx, dials)
	if err != nil {
		return err
	}
	defer closeAll()
	closedLoop(ctx, r.conc, warmup, get("plain"))
	closedLoop(ctx, r.conc, warmup, get("secure"))
	c := r.compare(ctx, get("plain"), []*proc{plain.proc}, get("secure"), []*proc{secure.proc})
	connect := func(name string) (time.Duration, error) {
		var ds []float64
		for range 100 {
			start := time.Now()
			conn, err := dials[name]()
			if err != nil {
				return 0, err
			}
			// The first call on the new connection (anonymous: answered
			// UNAUTHENTICATED by the server chain, no database).
			_, err = userv1.NewUserServiceClient(conn).GetUser(ctx, &userv1.GetUserRequest{Id: uuid.NewString()})
			conn.Close()
			if status.Code(err) != codes.Unauthenticated {
				return 0, fmt.Errorf("%s: first call on a new connection: %v", name, err)
			}
			ds = append(ds, float64(time.Since(start)))
		}
		return time.Duration(median(ds)), nil
	}
	plainConn, err := connect("plain")
	if err != nil {
		return err
	}
	secureConn, err := connect("secure")
	if err != nil {
		return err
	}
	r.add("6 security cost: unary GetUser", "plaintext (--insecure-plaintext)", true, c.base, map[string]*proc{"trellis": plain.proc}, "")
	r.add("6 security cost: unary GetUser", "mTLS 1.3 + authorization (default)", false, c.cand, map[string]*proc{"trellis": secure.proc},
		fmt.Sprintf("throughput ratio median of %d interleaved rounds: %.3f (rounds %v); server CPU per call %.1f vs %.1f µs; new connection + first call %.2f ms vs %.2f ms plaintext",
			r.rounds, c.ratio(), round3(c.ratios), c.candCPU, c.baseCPU, float64(secureConn)/1e6, float64(plainConn)/1e6))
	r.rep.Ratios["mtls_throughput"] = c.ratio()
	r.rep.Ratios["mtls_server_cpu"] = c.cpuRatio()
	r.rep.Ratios["mtls_connect_ms"] = float64(secureConn) / 1e6
	r.rep.Ratios["plaintext_connect_ms"] = float64(plainConn) / 1e6
	return nil
}

// clientCredentials are the identity spiffe://trellis.local/client/bench
// from the development CA in dir, for calling the user service.
func clientCredentials(dir string) (credentials.TransportCredentials, error) {
	td := spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)
	svid, bundle, err := identity.IssueFromDir(dir, td, "client/bench", time.Hour)
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.DiscardHandler)
	return identity.ClientCredentials(identity.Static(svid, bundle), identity.Component(td, "user"), log, identity.NewMetrics(prometheus.NewRegistry())), nil
}

// getUserCalls connects to each named system, creates a user on it and
// signs it in, and returns the call that reads that user back, with its
// access token, on that connection.
func getUserCalls(ctx context.Context, dials map[string]func() (*grpc.ClientConn, error)) (get func(name string) call, closeAll func(), err error) {
	clients := map[string]userv1.UserServiceClient{}
	ids := map[string]string{}
	opts := map[string]grpc.CallOption{}
	var conns []*grpc.ClientConn
	closeAll = func() {
		for _, c := range conns {
			c.Close()
		}
	}
	for name, d := range dials {
		conn, err := d()
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		conns = append(conns, conn)
		clients[name] = userv1.NewUserServiceClient(conn)
		var token string
		if ids[name], token, err = signUp(ctx, conn); err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		opts[name] = bearer(token, ids[name])
	}
	return func(name string) call {
		return func(ctx context.Context) error {
			_, err := clients[name].GetUser(ctx, &userv1.GetUserRequest{Id: ids[name]}, opts[name])
			return err
		}
	}, closeAll, nil
}

// round3 rounds each value to three decimals, for notes.
func round3(xs []float64) []float64 { return roundDigits(xs, 3) }

// roundDigits rounds each value to digits decimals, for notes.
func roundDigits(xs []float64, digits int) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i], _ = strconv.ParseFloat(strconv.FormatFloat(x, 'f', digits, 64), 64)
	}
	return out
}

func waitTCP(addr string) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not listening", addr)
}

// Scenario 2: GetUser and CreateUser, direct gRPC vs REST through the
// gateway, against one all-in-one trellis.
// target is a running system: where to call it and its processes.
type target struct {
	user, http string
	procs      map[string]*proc
}

// list is the target's processes, in no particular order.
func (t target) list() []*proc {
	var ps []*proc
	for _, p := range t.procs {
		ps = append(ps, p)
	}
	return ps
}

func (r *runner) gateway(ctx context.Context, sys target) error {
	conn, err := dial(sys.user)
	if err != nil {
		return err
	}
	defer conn.Close()
	users := userv1.NewUserServiceClient(conn)
	id, token, err := signUp(ctx, conn)
	if err != nil {
		return err
	}
	auth := bearer(token)
	base := "http://" + sys.http
	modes := []struct {
		name string
		grpc call
		rest call
	}{
		{"GetUser",
			func(ctx context.Context) error {
				_, err := users.GetUser(ctx, &userv1.GetUserRequest{Id: id}, auth)
				return err
			},
			func(ctx context.Context) error { return httpDo(ctx, "GET", base+"/api/v1/users/"+id, "", 200, token) }},
		{"CreateUser",
			func(ctx context.Context) error { _, err := createUser(ctx, users); return err },
			func(ctx context.Context) error {
				return httpDo(ctx, "POST", base+"/api/v1/users", `{"email":"h`+uuid.NewString()[:12]+`@example.com","name":"B","password":"correct-horse"}`, 201)
			}},
	}
	procs := sys.procs
	for _, m := range modes {
		closedLoop(ctx, r.conc, warmup, m.rest) // warm up
		c := r.compare(ctx, m.grpc, sys.list(), m.rest, sys.list())
		r.add("2 "+m.name, "direct gRPC", true, c.base, procs, "")
		r.add("2 "+m.name, "REST via gateway", false, c.cand, procs,
			fmt.Sprintf("throughput ratio %.3f, p50 ratio %.2f× (medians of %d rounds); system CPU per call %.1f vs %.1f µs",
				c.ratio(), c.p50, r.rounds, c.candCPU, c.baseCPU))
		r.rep.Ratios["gateway_throughput_"+m.name+r.suffix()] = c.ratio()
		r.rep.Ratios["gateway_p50_"+m.name+r.suffix()] = c.p50
		r.rep.Ratios["gateway_server_cpu_"+m.name+r.suffix()] = c.cpuRatio()
	}
	return nil
}

// Scenario 2, second part: GetUser through bare grpc-gateway (its
// ServeMux and a plain grpc-go client, nothing else) vs through the
// Trellis gateway, each as its own process in front of the same user
// service. Both pay the REST-to-gRPC hop; the ratio is what Trellis's
// layer on top of the library costs.
func (r *runner) gatewayLayer(ctx context.Context, sys *trellis) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bareAddr := freeAddr()
	bare, err := start("bare-gateway", self, "serve-bare-gateway", "--addr", bareAddr, "--upstream", sys.user)
	if err != nil {
		return err
	}
	defer bare.stop()
	gw, err := runTrellis(r.bin, "trellis-gateway", filepath.Join(r.tmp, "gw"), "--target", "gateway",
		"--user-upstream", sys.user, "--order-upstream", sys.order)
	if err != nil {
		return err
	}
	defer gw.stop()
	if err := waitTCP(bareAddr); err != nil {
		return err
	}
	id, token, err := signUpAt(ctx, sys.user)
	if err != nil {
		return err
	}
	get := func(addr string) call {
		url := "http://" + addr + "/api/v1/users/" + id
		return func(ctx context.Context) error { return httpDo(ctx, "GET", url, "", 200, token) }
	}
	closedLoop(ctx, r.conc, warmup, get(bareAddr))
	closedLoop(ctx, r.conc, warmup, get(gw.http))
	c := r.compare(ctx, get(bareAddr), []*proc{bare, sys.proc}, get(gw.http), []*proc{gw.proc, sys.proc})
	r.add("2 GetUser, gateway layer", "bare grpc-gateway, own process", true, c.base, map[string]*proc{"bare-gateway": bare, "trellis": sys.proc}, "")
	r.add("2 GetUser, gateway layer", "Trellis gateway, own process", false, c.cand, map[string]*proc{"gateway": gw.proc, "trellis": sys.proc},
		fmt.Sprintf("throughput ratio %.3f (medians of %d rounds); system CPU per call %.1f vs %.1f µs", c.ratio(), r.rounds, c.candCPU, c.baseCPU))
	r.rep.Ratios["gateway_vs_bare_grpc_gateway_GetUser"] = c.ratio()
	return nil
}

// Scenario 3: CreateOrder end to end (gateway → order → user, outbox,
// JetStream, consumer) at rising fixed rates, open loop; the highest rate
// with p99 under 50 ms and under 1% errors is the maximum sustainable rate.
func (r *runner) maxRate(ctx context.Context, sys target) error {
	uid, token, err := signUpAt(ctx, sys.user)
	if err != nil {
		return err
	}
	order := func(ctx context.Context) error {
		body := `{"userId":"` + uid + `","requestId":"` + uuid.NewString() + `","items":[{"productId":"p","quantity":1,"unitPrice":{"currencyCode":"EUR","amountMinor":"100"}}]}`
		return httpDo(ctx, "POST", "http://"+sys.http+"/api/v1/orders", body, 201, token)
	}
	sustained := func(rate int) bool {
		res := openLoop(ctx, rate, r.bounds(), order)
		var errs int64
		for _, n := range res.Errors {
			errs += n
		}
		ok := res.Requests > 0 && res.P99ms < 50 && float64(errs) < 0.01*float64(res.Requests)
		r.add("3 CreateOrder end to end", fmt.Sprintf("%d/s", rate), false, res, sys.procs,
			map[bool]string{true: "sustained", false: "not sustained (p99 ≥ 50 ms or ≥ 1% errors)"}[ok])
		if !ok {
			drain(ctx)
		}
		return ok
	}
	openLoop(ctx, 50, warmup, order)
	top := 6400
	if r.quick {
		top = 400
	}
	best := kneeSearch(top, sustained)
	if best < 100 {
		best = 0 // not even 100/s: scenario 3 tries nothing slower
	}
	r.rep.Ratios["max_sustainable_create_order_per_s"+r.suffix()] = float64(best)
	return nil
}

// Scenario 4: raw JetStream async publish vs the outbox relay, and
// commit-to-consumer lag: the event benchmarks of internal/outbox
// (outboxbench), run here with testing.Benchmark so the numbers land in
// the same report. NATS is embedded in this process; its CPU is this
// process's during each benchmark.
func (r *runner) events(context.Context) error {
	// Publishing 2000 events took ~30 ms, too short to outlast this
	// machine's noise: both profiles publish 20000, five times. The lag
	// benchmark runs at a fixed 200 events/s: 1000 events are 5 s.
	publishN, lagN := 20000, 1000
	if !r.quick {
		lagN = 2000
	}
	var raw, relay []float64
	lag := map[string][]float64{} // by unit: p50-ms, p90-ms, ...
	var publishUse, lagUse usage
	for range 5 {
		for _, b := range []struct {
			fn  func(*testing.B)
			out *[]float64
		}{{outboxbench.PublishRaw, &raw}, {outboxbench.PublishRelay, &relay}} {
			res, u, err := benchmark(b.fn, publishN)
			if err != nil {
				return err
			}
			*b.out = append(*b.out, float64(res.NsPerOp()))
			publishUse = plus(publishUse, u)
		}
	}
	for range 3 {
		res, u, err := benchmark(outboxbench.CommitToConsumerLag, lagN)
		if err != nil {
			return err
		}
		for unit, v := range res.Extra {
			lag[unit] = append(lag[unit], v)
		}
		lagUse = plus(lagUse, u)
	}
	if len(lag["p50-ms"]) == 0 || len(lag["p99.9-ms"]) == 0 {
		return errors.New("the lag benchmark reported no latencies")
	}
	rawRes := &result{Throughput: 1e9 / median(raw)}
	relayRes := &result{Throughput: 1e9 / median(relay)}
	publish := map[string]usage{"publish benchmarks, both, NATS embedded": publishUse}
	r.addUsage("4 events", "raw JetStream async publish", true, rawRes, publish, "")
	r.addUsage("4 events", "outbox relay (SQLite)", false, relayRes, publish, fmt.Sprintf("throughput ratio %.3f", relayRes.Throughput/rawRes.Throughput))
	r.addUsage("4 events", "commit → consumer at 200/s", false,
		&result{P50ms: median(lag["p50-ms"]), P90ms: median(lag["p90-ms"]), P99ms: median(lag["p99-ms"]), P999ms: median(lag["p99.9-ms"])},
		map[string]usage{"lag benchmark, NATS embedded": lagUse}, "")
	r.rep.Ratios["relay_vs_raw_publish"] = relayRes.Throughput / rawRes.Throughput
	return nil
}

var testingInit sync.Once

// benchmark runs fn n times with testing.Benchmark and returns its result
// and the CPU this process used meanwhile. A benchmark that fails (b.Fatal)
// is an error, not a zero result.
func benchmark(fn func(*testing.B), n int) (testing.BenchmarkResult, usage, error) {
	testingInit.Do(testing.Init) // registers -test.benchtime, which sets b.N
	if err := flag.Set("test.benchtime", strconv.Itoa(n)+"x"); err != nil {
		return testing.BenchmarkResult{}, usage{}, err
	}
	before := selfUsage()
	res := testing.Benchmark(fn)
	if res.N == 0 {
		return res, usage{}, errors.New("event benchmark failed (its error is on stderr)")
	}
	return res, since(selfUsage(), before), nil
}

// Scenario 5: the latency of a call answered by an open breaker vs a
// healthy call, on user and order as separate processes.
func (r *runner) breaker(ctx context.Context) error {
	natsListen := freeAddr()
	user, err := runTrellis(r.bin, "user", filepath.Join(r.tmp, "b-user"), "--target", "user,order", "--nats-listen", natsListen)
	if err != nil {
		return err
	}
	defer user.stop()
	conn, err := dial(user.order)
	if err != nil {
		return err
	}
	defer conn.Close()
	uid, token, err := signUpAt(ctx, user.user)
	if err != nil {
		return err
	}
	auth := bearer(token)
	orders := orderv1.NewOrderServiceClient(conn)
	var n atomic.Int64
	order := func(userID string) call {
		return func(ctx context.Context) error {
			_, err := orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: userID, RequestId: "r" + strconv.FormatInt(n.Add(1), 10) + uuid.NewString()[:8],
				Items: []*orderv1.OrderItem{{ProductId: "p", Quantity: 1, UnitPrice: &orderv1.Money{CurrencyCode: "EUR", AmountMinor: 1}}}}, auth)
			return err
		}
	}
	healthy := closedLoop(ctx, 1, r.bounds(), order(uid))
	r.add("5 breaker", "healthy CreateOrder (checks the user)", true, healthy, map[string]*proc{"trellis": user.proc}, "")
	// Open the breaker: the user service answers, but not for this
	// upstream: point a second order service at a dead address.
	dead := freeAddr()
	broken, err := runTrellis(r.bin, "order", filepath.Join(r.tmp, "b-order"), "--target", "order", "--user-upstream", dead,
		"--nats-url", "nats://"+natsListen, "--breaker-timeout", "1h")
	if err != nil {
		return err
	}
	defer broken.stop()
	bconn, err := dial(broken.order)
	if err != nil {
		return err
	}
	defer bconn.Close()
	orders = orderv1.NewOrderServiceClient(bconn)
	for range 5 {
		_ = order(uuid.NewString())(ctx)
	}
	open := closedLoop(ctx, 1, r.bounds(), order(uuid.NewString()))
	r.add("5 breaker", "CreateOrder, user breaker open (UNAVAILABLE at once)", false, open, map[string]*proc{"order": broken.proc},
		fmt.Sprintf("p50 %.3f ms vs healthy %.3f ms; this order service never reached the user service, so the breaker answers for the signing keys that would verify the token as well as for the user", open.P50ms, healthy.P50ms))
	r.rep.Ratios["breaker_open_p50_ms"] = open.P50ms
	return nil
}
