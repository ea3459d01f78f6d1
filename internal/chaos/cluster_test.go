//go:build cluster

package chaos_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh/identity"
)

// The cluster scenarios run Trellis the way it runs on several machines:
// every process on a host of its own — a Linux network namespace with its
// own address on a private bridge, its own /etc/hosts — and a JetStream
// cluster of three nats-server nodes holding every stream with three
// replicas. Faults are real network faults: a host's link taken down (a
// partition), its processes SIGKILLed (dead) or SIGSTOPped (hung).
//
//	         10.213.0.0/24 bridge "trbr0" (this host: 10.213.0.1,
//	         PostgreSQL and Redis through toxiproxy)
//	  ┌───────┬───────┬───────┬───────┬───────┬───────┬───────┬───────┐
//	gw1    user1   user2  order1  order2  nats1   nats2   nats3
//	.10     .11     .12    .13     .14     .15     .16     .17
//
// Names resolve per host: "user" is user1 and user2, "order" order1 and
// order2, so dns:///user:9001 returns two addresses.

const (
	subnet = "10.213.0"
	bridge = "trbr0"
	nsPfx  = "trl-"
)

// clusterRate is the orders per second every cluster scenario sends, and
// the rate settle warms the system at. The whole cluster — 5 Trellis
// processes, 3 NATS nodes, PostgreSQL, the load generator and toxiproxy —
// shares this machine's two CPUs; measured (/proc/stat, 15 s, no fault):
// 12 % busy idle, 67 % at 100/s, 80 % at 150/s. At 150/s a few seconds of
// anything else on the host (the CI's previous stages, a daemon waking up)
// saturated it, and the system's own queueing then failed requests with no
// fault at all, which the scenarios would have blamed on their faults. At
// 100/s a third of the machine is left; the bounds are the same.
const clusterRate = 100

var hostNames = []string{"gw1", "user1", "user2", "order1", "order2", "nats1", "nats2", "nats3"}

func hostIP(name string) string {
	for i, h := range hostNames {
		if h == name {
			return fmt.Sprintf("%s.%d", subnet, 10+i)
		}
	}
	panic("no host " + name)
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// removeTopology deletes the hosts and the bridge (also what a crashed
// earlier run left).
func removeTopology() {
	for _, h := range hostNames {
		_ = exec.Command("ip", "netns", "del", nsPfx+h).Run()
		_ = exec.Command("ip", "link", "del", "trv-"+h).Run()
		_ = os.RemoveAll("/etc/netns/" + nsPfx + h)
	}
	_ = exec.Command("ip", "link", "del", bridge).Run()
}

// buildTopology creates the hosts; the test's cleanup removes them.
func buildTopology(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the cluster scenarios make network namespaces: run them as root (make chaos-cluster)")
	}
	removeTopology()
	t.Cleanup(removeTopology)
	ipCmd(t, "link", "add", bridge, "type", "bridge")
	ipCmd(t, "addr", "add", subnet+".1/24", "dev", bridge)
	ipCmd(t, "link", "set", bridge, "up")
	hosts := "127.0.0.1 localhost\n" + subnet + ".1 infra\n"
	for _, h := range hostNames {
		hosts += hostIP(h) + " " + h + "\n"
		if role := strings.TrimRight(h, "0123456789"); role == "user" || role == "order" {
			hosts += hostIP(h) + " " + role + "\n"
		}
	}
	for _, h := range hostNames {
		ns := nsPfx + h
		ipCmd(t, "netns", "add", ns)
		ipCmd(t, "link", "add", "trv-"+h, "type", "veth", "peer", "name", "eth0", "netns", ns)
		ipCmd(t, "link", "set", "trv-"+h, "master", bridge, "up")
		ipCmd(t, "-n", ns, "addr", "add", hostIP(h)+"/24", "dev", "eth0")
		ipCmd(t, "-n", ns, "link", "set", "eth0", "up")
		ipCmd(t, "-n", ns, "link", "set", "lo", "up")
		ipCmd(t, "-n", ns, "route", "add", "default", "via", subnet+".1")
		// ip netns exec mounts /etc/netns/<ns>/hosts over /etc/hosts.
		if err := os.MkdirAll("/etc/netns/"+ns, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("/etc/netns/"+ns+"/hosts", []byte(hosts), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// partition takes host's link down (nothing in or out); heal brings it up.
func partition(t *testing.T, host string) { ipCmd(t, "link", "set", "trv-"+host, "down") }
func heal(t *testing.T, host string)      { ipCmd(t, "link", "set", "trv-"+host, "up") }

var (
	natsBuild     sync.Once
	natsBuildPath string
	natsBuildErr  error
)

// clusterNATSBin builds nats-server at the version go.mod pins (the
// machine's Debian binary is older than JetStream's sync_interval).
func clusterNATSBin(t *testing.T) string {
	t.Helper()
	natsBuild.Do(func() {
		dir, err := os.MkdirTemp("", "trellis-nats-")
		if err != nil {
			natsBuildErr = err
			return
		}
		natsBuildPath = filepath.Join(dir, "nats-server")
		cmd := exec.Command("go", "build", "-o", natsBuildPath, "github.com/nats-io/nats-server/v2")
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			natsBuildErr = fmt.Errorf("build nats-server: %v\n%s", err, out)
		}
	})
	if natsBuildErr != nil {
		t.Fatal(natsBuildErr)
	}
	return natsBuildPath
}

// cluster is a system on the hosts: s is what the single-host scenarios'
// load and ledger use.
type cluster struct {
	s       *system
	nats    map[string]*proc // by host
	natsCfg map[string]string
	redis   *toxiproxy.Proxy
}

type clusterOptions struct {
	syncAlways bool     // JetStream sync_interval: always
	order      []string // extra flags of the order replicas
}

func startCluster(t *testing.T, o clusterOptions) *cluster {
	t.Helper()
	buildTopology(t)
	s := &system{t: t, dbURL: newDatabase(t), idDir: t.TempDir()}
	c := &cluster{s: s, nats: map[string]*proc{}, natsCfg: map[string]string{}}

	// PostgreSQL and Redis listen on this host's loopback; the hosts reach
	// them on the bridge: PostgreSQL through a plain forwarder, Redis
	// through toxiproxy (a Redis partition black-holes it). PostgreSQL went
	// through toxiproxy too until 2026-12-05: every query of the five
	// processes then passed through this test process — the load
	// generator's — and its proxy pipeline, and the suite saw moments
	// of CreateOrder in 300–1 000 ms and GetUser in ~450 ms, at once on
	// every replica: 504s in the hung-replica scenario (5–73 a run) and
	// in the quorum scenario (0–22), before the fault as often as after.
	// With the forwarder: 0 in four runs of each, 21 and 0 in a full run.
	forwardAt(t, subnet+".1:15432", hostPort(testenv.PostgresURL()))
	c.redis = newProxyAt(t, subnet+".1:16379", "127.0.0.1:6379")
	dbURL := strings.Replace(s.dbURL, hostPort(s.dbURL), "infra:15432", 1)

	// Three NATS nodes: TLS for clients and routes from the system's CA,
	// the per-identity permissions trellis identity nats-config prints.
	var routes, urls []string
	for _, h := range []string{"nats1", "nats2", "nats3"} {
		routes = append(routes, "nats-route://"+h+":6222")
		urls = append(urls, "tls://"+hostIP(h)+":4222")
	}
	for _, h := range []string{"nats1", "nats2", "nats3"} {
		dir := t.TempDir()
		svid, bundle := s.issue("trellis/nats")
		if err := identity.WriteFiles(dir, svid, bundle); err != nil {
			t.Fatal(err)
		}
		route, _ := s.issue("trellis/" + h) // a certificate for the host name its peers dial
		if err := identity.WriteFiles(filepath.Join(dir, "route"), route, bundle); err != nil {
			t.Fatal(err)
		}
		syncLine := ""
		if o.syncAlways {
			syncLine = "  sync_interval: always\n"
		}
		conf := fmt.Sprintf("server_name: %s\nlisten: %q\njetstream {\n  store_dir: %q\n%s}\ncluster {\n  name: trellis\n  listen: %q\n  routes: [%s]\n  no_advertise: true\n  tls {\n    cert_file: %q\n    key_file: %q\n    ca_file: %q\n    verify: true\n    timeout: 2\n  }\n}\n",
			h, hostIP(h)+":4222", filepath.Join(dir, "js"), syncLine, hostIP(h)+":6222", strings.Join(routes, ", "),
			filepath.Join(dir, "route", "svid.pem"), filepath.Join(dir, "route", "svid-key.pem"), filepath.Join(dir, "route", "bundle.pem")) +
			app.NATSServerConfig(identity.DefaultTrustDomain, "", filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid-key.pem"), filepath.Join(dir, "bundle.pem"))
		c.natsCfg[h] = filepath.Join(dir, "nats.conf")
		if err := os.WriteFile(c.natsCfg[h], []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		c.startNATS(h)
	}
	s.natsURL = strings.Join(urls, ",")
	c.waitNATS(3)

	common := []string{"--database-url", dbURL, "--nats-url", "tls://nats1:4222,tls://nats2:4222,tls://nats3:4222", "--nats-replicas", "3",
		"--log-level", "warn", "--bcrypt-cost", "4", "--breaker-timeout", "2s", "--reconcile-interval", "500ms", "--drain-timeout", "10s",
		"--upstream-timeout", "1s", "--identity-dir", s.idDir,
		"--rate-read", "0", "--rate-write", "0", "--rate-auth", "0", "--http-max-conns-per-client", "0", "--grpc-max-conns-per-client", "0"}
	start := func(host, target string, args ...string) *component {
		ip := hostIP(host)
		comp := &component{addr: ip + ":9001", admin: ip + ":9090"}
		all := append([]string{"run", "--target", target, "--admin-addr", comp.admin}, common...)
		switch target {
		case "user":
			all = append(all, "--user-addr", comp.addr)
		case "order":
			comp.addr = ip + ":9002"
			all = append(all, "--order-addr", comp.addr, "--user-upstream", "user:9001")
		case "gateway":
			comp.addr = ip + ":8080"
			all = append(all, "--http-addr", comp.addr, "--user-upstream", "user:9001", "--order-upstream", "order:9002")
		}
		comp.proc = startProcIn(t, nsPfx+host, host, trellisBin, append(all, args...)...)
		return comp
	}
	s.users = []*component{start("user1", "user"), start("user2", "user")}
	for _, u := range s.users {
		u.ready(t)
	}
	s.orders = []*component{start("order1", "order", o.order...), start("order2", "order", o.order...)}
	for _, c := range s.orders {
		c.ready(t)
	}
	s.gateways = []*component{start("gw1", "gateway")}
	s.gateways[0].ready(t)
	return c
}

// settle waits until the system has found its feet on the new hosts: an
// order goes through, and no breaker in the gateway or the order replicas
// is open or half-open (each fresh host's first connections take a few
// seconds: breakers open and close while they do — see resilience.md).
// Then it warms the system up at the scenarios' rate and waits for closed
// breakers again: a cold cluster that meets its full rate at once answers
// its first second slowly (up to the 1 s upstream timeout: database
// connections are opened, caches filled), and the gateway's breaker on the
// order service opens for 2 s — measured: 15 % of a 15 s load failed with
// no fault at all. The scenarios measure faults, so cold start is kept out
// of their ledgers. Only then does a scenario start its load and its fault.
func (c *cluster) settle(users []string) {
	c.s.t.Helper()
	c.closed(users)
	w := newLoad(c.s.t, c.s, users, clusterRate, 0)
	w.start()
	time.Sleep(4 * time.Second)
	w.finish()
	c.closed(users)
}

// closed waits until an order goes through and no breaker is open.
func (c *cluster) closed(users []string) {
	t := c.s.t
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; ; i++ {
		ok := true
		for _, comp := range append(append([]*component{}, c.s.gateways...), c.s.orders...) {
			ok = ok && metric(t, comp.admin, "trellis_breaker_state") == 0
		}
		u := users[i%len(users)]
		resp, err := post(client, "http://"+c.s.gateways[0].addr+"/api/v1/orders",
			fmt.Sprintf(`{"userId":%q,"requestId":"settle-%d-%s","items":[{"productId":"p","quantity":1,"unitPrice":{"currencyCode":"EUR","amountMinor":"100"}}]}`, u, i, u), c.s.token(u))
		if err == nil {
			ok = ok && resp.StatusCode == http.StatusCreated
			resp.Body.Close()
		} else {
			ok = false
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the cluster did not settle within 60s (a breaker stayed open or orders failed)")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *cluster) startNATS(host string) {
	c.nats[host] = startProcIn(c.s.t, nsPfx+host, host, clusterNATSBin(c.s.t), "-c", c.natsCfg[host])
}

// waitNATS waits until the cluster has a JetStream meta leader and
// healthy peers reachable from this host.
func (c *cluster) waitNATS(peers int) {
	t := c.s.t
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		nc, err := c.s.natsAs("client/" + app.EventsReader)
		if err == nil {
			js, _ := jetstream.New(nc)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err = js.AccountInfo(ctx)
			cancel()
			nc.Close()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			logs := ""
			for h, p := range c.nats {
				logs += "--- " + h + "\n" + tailString(p.logs(), 1500)
			}
			t.Fatalf("JetStream cluster not ready: %v\n%s", err, logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// streamInfo asks the nodes at url (one, or the comma list of all) for
// stream's state, as the events reader, within d.
func (c *cluster) streamInfo(url, stream string, d time.Duration) (*jetstream.StreamInfo, error) {
	nc, err := nats.Connect(url, nats.Secure(c.s.tlsAs("client/"+app.EventsReader)), nats.MaxReconnects(0), nats.Timeout(d))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	return st.Info(ctx)
}

// leader is the host leading stream's replicas, as JetStream reports it,
// asked again for up to 15 s while none is reported: right after a fault
// heals the nodes may be electing one (CI: a partitioned leader back for
// 5 s, "no leader" in the report's last question, with writes long since
// resumed and the outbox drained).
func (c *cluster) leader(stream string) string {
	t := c.s.t
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	info, err := c.streamInfo(c.s.natsURL, stream, 5*time.Second)
	for (err != nil || info.Cluster == nil || info.Cluster.Leader == "") && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		info, err = c.streamInfo(c.s.natsURL, stream, 5*time.Second)
	}
	if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
		t.Fatalf("stream %s: no leader within 15s: %v", stream, err)
	}
	if n := len(info.Cluster.Replicas) + 1; n != 3 {
		t.Fatalf("stream %s has %d replicas; want 3", stream, n)
	}
	return info.Cluster.Leader
}

// lastSeq is stream's last sequence as any reachable node answers, or -1.
func (c *cluster) lastSeq(stream string) int64 {
	info, err := c.streamInfo(c.s.natsURL, stream, time.Second)
	if err != nil {
		return -1
	}
	return int64(info.State.LastSeq)
}

// everyNodeAnswers reports whether each node, asked on its own, answers
// for stream (a node back from a partition says "JetStream system
// temporarily unavailable" until it has caught up).
func (c *cluster) everyNodeAnswers(stream string) bool {
	for _, h := range []string{"nats1", "nats2", "nats3"} {
		if _, err := c.streamInfo("tls://"+hostIP(h)+":4222", stream, time.Second); err != nil {
			return false
		}
	}
	return true
}

// resumeAfter measures from now until stream's last sequence passes what
// it was when the fault began (writes accepted again), within 60s.
func (c *cluster) resumeAfter(stream string, before int64) time.Duration {
	start := time.Now()
	for time.Since(start) < 60*time.Second {
		if seq := c.lastSeq(stream); seq > before {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return -1
}

// drained waits until no order replica has unpublished events.
func (c *cluster) drained() bool {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		pending := 0.0
		for _, o := range c.s.orders {
			pending += max(0, metric(c.s.t, o.admin, "trellis_outbox_pending"))
		}
		// Drained, and the stream answers (after a partition heals the
		// nodes take a moment to agree again).
		if pending == 0 && c.everyNodeAnswers("TRELLIS_ORDER") {
			return true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return false
}

func (c *cluster) published(o *component) float64 {
	return metric(c.s.t, o.admin, "trellis_outbox_published_total")
}

func hostPort(dbURL string) string {
	rest := dbURL[strings.Index(dbURL, "@")+1:]
	return rest[:strings.IndexAny(rest, "/?")]
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// ---- scenarios ----

// leaderFault: under load, fault takes the node leading the order stream
// away for hold after writes resume elsewhere, then cure brings it back;
// a new leader takes over within bound, the old one catches up, nothing
// acknowledged is lost or doubled.
func leaderFault(t *testing.T, name, what string, bound, hold time.Duration, fault, cure func(c *cluster, leader string)) {
	c := startCluster(t, clusterOptions{})
	users := createUsers(t, c.s, 10)
	c.settle(users)
	l := newLoad(t, c.s, users, clusterRate, 20*time.Second)
	l.start()
	time.Sleep(3 * time.Second)
	leader := c.leader("TRELLIS_ORDER")
	before := c.lastSeq("TRELLIS_ORDER")
	fault(c, leader)
	resume := c.resumeAfter("TRELLIS_ORDER", before)
	time.Sleep(hold)
	cure(c, leader)
	time.Sleep(5 * time.Second)
	l.finish()
	var fails []string
	if !c.drained() {
		fails = append(fails, "outbox not drained after the "+what+" leader came back")
	}
	if resume < 0 || resume > bound {
		fails = append(fails, fmt.Sprintf("writes resumed after %v; want within %v", resume, bound))
	}
	sum := l.ledger(c.s)
	if len(sum.failed) > 0 {
		fails = append(fails, "RPCs failed while the stream leader was "+what)
	}
	sum.notes = fmt.Sprintf("%s leader %s; writes resumed after %v; new leader %s", what, leader, resume.Round(10*time.Millisecond), c.leader("TRELLIS_ORDER"))
	if len(fails) > 0 { // what the relays and gateways said, for the CI log
		for _, o := range append(slices.Clone(c.s.orders), c.s.gateways...) {
			t.Logf("--- %s (last lines)\n%s", o.name, tailString(o.logs(), 2000))
		}
	}
	report(t, name, sum, fails...)
}

// untouchedPath checks the ledger of a scenario whose fault must not touch
// the request path (JetStream without quorum: the outbox holds the events;
// Redis away: each replica keeps its own breaker), run without client
// retries: no request may fail for the fault, which would show as 503 or
// 500 — not one. A 504 is a call that outlived the suite's 1 s upstream
// timeout; on two cores shared by a dozen processes (~75 % busy at
// clusterRate, and 100 % for seconds while a JetStream node catches up
// after its restart: vmstat, run queue 19–34) a few may, whatever the
// fault. So 504s are allowed up to 1 % of the requests and reported; more
// is a failure. (The quorum scenario lost 6–22 requests to 504 in four of
// seven runs while PostgreSQL went through toxiproxy, see startCluster; 0
// in four runs since.)
func untouchedPath(sum summary) string {
	var other []string
	for code, n := range sum.failed {
		if code != http.StatusGatewayTimeout {
			other = append(other, fmt.Sprintf("%d×%d", n, code))
		}
	}
	switch {
	case len(other) > 0:
		return "failed: " + strings.Join(other, ", ")
	case sum.failed[http.StatusGatewayTimeout]*100 > sum.sent:
		return fmt.Sprintf("%d of %d answered 504 (allowed: 1 %%, a machine busy for a moment)", sum.failed[http.StatusGatewayTimeout], sum.sent)
	}
	return ""
}

// TestClusterStreamLeaderKilled: the leader SIGKILLed, restarted 5 s after
// writes resume.
func TestClusterStreamLeaderKilled(t *testing.T) {
	leaderFault(t, "cluster-kill-leader", "killed", 15*time.Second, 5*time.Second,
		func(c *cluster, leader string) { c.nats[leader].kill() },
		func(c *cluster, leader string) { c.startNATS(leader) })
}

// TestClusterQuorumLost: two of three nodes die; the stream cannot take
// writes, RPCs still succeed (events wait in the outbox), and when the
// quorum returns everything is published once.
func TestClusterQuorumLost(t *testing.T) {
	// The durable setting docs/consistency.md recommends: every write
	// synced to disk before JetStream acknowledges it.
	c := startCluster(t, clusterOptions{syncAlways: true})
	users := createUsers(t, c.s, 10)
	c.settle(users)
	l := newLoad(t, c.s, users, clusterRate, 0)
	l.start()
	time.Sleep(3 * time.Second)
	leader := c.leader("TRELLIS_ORDER")
	killed := []string{leader} // and one other
	for _, h := range []string{"nats1", "nats2", "nats3"} {
		if h != leader && len(killed) < 2 {
			killed = append(killed, h)
		}
	}
	for _, h := range killed {
		c.nats[h].kill()
	}
	time.Sleep(10 * time.Second)
	backlog := 0.0
	for _, o := range c.s.orders {
		backlog += max(0, metric(t, o.admin, "trellis_outbox_pending"))
	}
	before := c.lastSeq("TRELLIS_ORDER")
	for _, h := range killed {
		c.startNATS(h)
	}
	resume := c.resumeAfter("TRELLIS_ORDER", before)
	time.Sleep(3 * time.Second)
	l.finish()
	var fails []string
	if !c.drained() {
		fails = append(fails, "outbox not drained after the quorum returned")
	}
	sum := l.ledger(c.s)
	if f := untouchedPath(sum); f != "" {
		fails = append(fails, "RPCs failed while JetStream had no quorum (they must not: the outbox holds the events): "+f)
	}
	if backlog < 100 {
		fails = append(fails, fmt.Sprintf("outbox backlog without quorum was %v; want it to grow", backlog))
	}
	sum.notes = fmt.Sprintf("killed %s for 10s; outbox backlog≈%v; writes resumed %v after the restart", strings.Join(killed, "+"), backlog, resume.Round(10*time.Millisecond))
	report(t, "cluster-lose-quorum", sum, fails...)
}

// TestClusterLeaderPartitioned: the leader's host cut off from everything,
// healed 8 s after writes resume; the majority elects a new leader, the
// old one steps down and catches up.
func TestClusterLeaderPartitioned(t *testing.T) {
	leaderFault(t, "cluster-partition-leader", "partitioned", 20*time.Second, 8*time.Second,
		func(c *cluster, leader string) { partition(t, leader) },
		func(c *cluster, leader string) { heal(t, leader) })
}

// userReplicaFault runs load while fault (and then cure) is applied to the
// user1 host: the order service's calls to the user service must keep
// succeeding on user2, the breaker on "user" must stay closed, and user1
// must take calls again after it recovers.
func userReplicaFault(t *testing.T, name string, fault, cure func(c *cluster)) {
	c := startCluster(t, clusterOptions{})
	users := createUsers(t, c.s, 10)
	c.settle(users)
	watches := []*breakerWatch{watchBreaker(t, c.s.orders[0].admin), watchBreaker(t, c.s.orders[1].admin)}
	l := newLoad(t, c.s, users, clusterRate, 0) // no client retries: every failure shows
	l.start()
	time.Sleep(3 * time.Second)
	fault(c)
	time.Sleep(10 * time.Second)
	cure(c)
	time.Sleep(2 * time.Second)
	served := metric(t, c.s.users[0].admin, "grpc_server_handled_total")
	time.Sleep(8 * time.Second)
	l.finish()
	backAgain := metric(t, c.s.users[0].admin, "grpc_server_handled_total") - served
	var fails []string
	states := []string{}
	for _, w := range watches {
		st := w.finish()
		states = append(states, st)
		if opened, _ := w.state(); !opened.IsZero() {
			fails = append(fails, "the breaker on the user service opened although one replica was healthy: "+st)
		}
	}
	sum := l.ledger(c.s)
	failed := 0
	for _, n := range sum.failed {
		failed += n
	}
	// The calls already on their way to the replica when it failed may
	// fail (at most the upstream timeout's worth); after ejection, none:
	// 2 % for the fault, on top of what this machine fails without one —
	// the failures of the load's first 3 s, before the fault, at the same
	// rate over the whole load. Two cores shared by a dozen processes have
	// slow moments (504s before the fault in 4 of ~12 runs on 2026-12-05,
	// up to 20 in those 3 s, the rest of the run then over 2 % by a few
	// requests); a replica left in the rotation fails hundreds.
	baseline := 0
	for sec, byCode := range l.failures {
		if sec < 3 {
			for _, n := range byCode {
				baseline += n
			}
		}
	}
	allowed := sum.sent/50 + baseline*int(l.ran/time.Second)/3
	if failed > allowed {
		fails = append(fails, fmt.Sprintf("%d of %d requests failed; want at most %d: 2%% for the fault, the replica ejected within a sweep, and %d failed in the 3 s before it at that rate over the load", failed, sum.sent, allowed, baseline))
	}
	sum.notes = fmt.Sprintf("%d failed before the fault; ", baseline)
	if backAgain <= 0 {
		fails = append(fails, "user1 took no calls after it recovered: never returned to the rotation")
	}
	sum.notes += fmt.Sprintf("breaker %s; user1 served %v calls after recovery", strings.Join(states, " / "), backAgain)
	report(t, name, sum, fails...)
}

// TestClusterUserReplicaHung: user1 SIGSTOPped (its connections stay open,
// nothing answers) for 10 s.
func TestClusterUserReplicaHung(t *testing.T) {
	userReplicaFault(t, "cluster-hang-user-replica",
		func(c *cluster) { c.s.users[0].signal(syscall.SIGSTOP) },
		func(c *cluster) { c.s.users[0].signal(syscall.SIGCONT) })
}

// TestClusterUserReplicaPartitioned: user1's host cut off for 10 s.
func TestClusterUserReplicaPartitioned(t *testing.T) {
	userReplicaFault(t, "cluster-partition-user",
		func(c *cluster) { partition(t, "user1") },
		func(c *cluster) { heal(t, "user1") })
}

// relayFailover: the order replica whose relay holds the outbox lease
// meets fault; the other replica's relay takes over after the lease
// expires and publishes every event once.
func relayFailover(t *testing.T, name string, fault func(c *cluster, relay *component), cure func(c *cluster, relay *component)) {
	c := startCluster(t, clusterOptions{})
	users := createUsers(t, c.s, 10)
	c.settle(users)
	l := newLoad(t, c.s, users, clusterRate, 20*time.Second)
	l.start()
	time.Sleep(3 * time.Second)
	var relay, other *component
	for i, o := range c.s.orders {
		if c.published(o) > 0 {
			relay, other = o, c.s.orders[1-i]
		}
	}
	if relay == nil {
		t.Fatal("no order replica published events")
	}
	if c.published(other) > 0 {
		t.Errorf("both order replicas published: the outbox lease let two relays run")
	}
	fault(c, relay)
	took := time.Now()
	for c.published(other) <= 0 && time.Since(took) < 30*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	failover := time.Since(took)
	time.Sleep(3 * time.Second)
	cure(c, relay)
	time.Sleep(2 * time.Second)
	l.finish()
	var fails []string
	if c.published(other) <= 0 {
		fails = append(fails, "the surviving replica's relay never took over")
	}
	if !c.drained() {
		fails = append(fails, "outbox not drained after the failover")
	}
	sum := l.ledger(c.s)
	if len(sum.failed) > 0 {
		fails = append(fails, "requests failed although clients retried")
	}
	sum.notes = fmt.Sprintf("relay %s: %s; %s took over after %v", relay.name, name, other.name, failover.Round(10*time.Millisecond))
	report(t, "cluster-relay-"+name, sum, fails...)
}

// TestClusterRelayFailover: the relay's replica is killed (and stays
// dead: only the survivor is left to drain).
func TestClusterRelayFailover(t *testing.T) {
	relayFailover(t, "killed", func(c *cluster, relay *component) { relay.kill() },
		func(c *cluster, relay *component) {
			c.s.orders = slices.DeleteFunc(c.s.orders, func(o *component) bool { return o == relay })
		})
}

// TestClusterRelayPartitioned: the relay's host is cut off (its lease
// cannot be renewed, its publishes cannot reach NATS) for the rest of the
// load, then healed: it must not publish what the survivor published.
func TestClusterRelayPartitioned(t *testing.T) {
	relayFailover(t, "partitioned", func(c *cluster, relay *component) { partition(t, hostOf(relay)) },
		func(c *cluster, relay *component) { heal(t, hostOf(relay)) })
}

// hostOf is the host a component runs on.
func hostOf(c *component) string { return c.name }

// TestClusterRedisPartitioned: the order replicas share breaker state in
// Redis; Redis becomes unreachable (connections hang) for 10 s. Each
// replica falls back to its own breaker; no call fails for it.
func TestClusterRedisPartitioned(t *testing.T) {
	c := startCluster(t, clusterOptions{order: []string{"--redis-url", "redis://infra:16379/0"}})
	users := createUsers(t, c.s, 10)
	c.settle(users)
	l := newLoad(t, c.s, users, clusterRate, 0) // no client retries: every failure shows
	l.start()
	time.Sleep(3 * time.Second)
	// A black hole, not a refusal: a partition drops packets.
	addToxic(t, c.redis, `{"name":"blackhole","type":"timeout","stream":"upstream","attributes":{"timeout":0}}`)
	time.Sleep(10 * time.Second)
	c.redis.Toxics.ResetToxics(context.Background())
	time.Sleep(3 * time.Second)
	l.finish()
	sum := l.ledger(c.s)
	var fails []string
	if f := untouchedPath(sum); f != "" {
		fails = append(fails, "requests failed while Redis was unreachable: "+f)
	}
	sum.notes = "redis blackholed 10s"
	report(t, "cluster-partition-redis", sum, fails...)
}

// forwardAt forwards TCP connections from listen to upstream (the kernel
// copies: TCPConn.ReadFrom splices), until the test ends.
func forwardAt(t *testing.T, listen, upstream string) {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", upstream)
			if err != nil {
				in.Close()
				continue
			}
			wg.Go(func() {
				defer in.Close()
				defer out.Close()
				done := make(chan struct{})
				go func() {
					defer close(done)
					_, _ = io.Copy(out, in)
					out.(*net.TCPConn).CloseWrite()
				}()
				_, _ = io.Copy(in, out)
				in.(*net.TCPConn).CloseWrite()
				<-done
			})
		}
	})
}
