package mesh

import (
	"context"
	"errors"
	"flag"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go/adaptivelimiter"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ShedConfig turns on adaptive concurrency limiting of a server's API
// (load shedding). On by default: see docs/resilience.md, "Overload".
type ShedConfig struct {
	// Enabled turns shedding on.
	Enabled bool
	// MinLimit and MaxLimit bound the concurrency limit the limiter
	// adapts; it starts at MinLimit*2 (at most MaxLimit).
	MinLimit, MaxLimit uint
	// MaxWait is how long a call may queue for a slot before it is
	// refused; 0 (the default) refuses at once.
	MaxWait time.Duration
	// Pushback is the retry delay told to a refused caller
	// (grpc-retry-pushback-ms and RetryInfo), jittered ±50%.
	Pushback time.Duration
	// RunQueue is the Go scheduler's run queue — goroutines ready to run
	// but waiting for a CPU, per CPU (GOMAXPROCS), median of 50 ms windows —
	// above which the process counts as short of CPU: only then are calls
	// over the limit refused. Zero refuses over the limit always.
	RunQueue float64
	// CPUShare is the share of its CPUs (GOMAXPROCS) the process must
	// have used in a window for a long run queue to count: under it, the
	// process is taken to be starved by other processes, not short of CPU
	// for its own work. Zero: the run queue alone decides.
	CPUShare float64
	// CPUMillis, when positive, is the CPU the process is entitled to, in
	// thousandths of a CPU — its Kubernetes CPU request (the manifests in
	// deploy/k8s pass it through the downward API): CPUShare is then of
	// this, where it is under GOMAXPROCS and the cgroup's CPU limit. Zero:
	// of GOMAXPROCS, or of the cgroup's CPU limit where that is lower.
	CPUMillis uint
	// LatencyTarget, when positive, caps the calls in flight while the
	// process is short of CPU (or an upstream sheds) at what the server
	// completes in that time: its completions per second over the last
	// 200 ms times LatencyTarget, never under MinLimit. By Little's law
	// an admitted call then spends about LatencyTarget in the server.
	LatencyTarget time.Duration
	// Saturated, when set, replaces the scheduler signal (tests).
	Saturated func() bool
	// Upstream, when set, is the process's record of its upstreams'
	// overload refusals (ClientConfig.Overload): while one of them sheds,
	// calls over this limit are refused as if the process were short of
	// CPU itself (reason "upstream_overload").
	Upstream *UpstreamOverload
}

// UpstreamOverload remembers, for a second, that an upstream refused a
// call for overload — an answer RESOURCE_EXHAUSTED with
// grpc-retry-pushback-ms, which only a mesh server's admission sends.
// One per process: the mesh clients mark it (ClientConfig.Overload) and
// the process's limiters read it (ShedConfig.Upstream).
//
// It carries the CPU signal down a chain whose processes share CPUs with
// each other. A component that is short of CPU sheds; its callers, whose
// own CPU signal reads "starved by neighbours" (they share the CPUs with
// it, and with the database), would otherwise go on admitting every call
// over their limits and pass the flood down, where it queues in
// connections and handlers before it is refused. With it the edge sheds
// too: early, before a hop, and its limit bounds the calls in flight in
// the whole chain. A slow upstream is still not overload: only an
// upstream that refuses for lack of CPU sets it.
type UpstreamOverload struct {
	until atomic.Int64 // unix ns
}

// Mark records an overload refusal now.
func (u *UpstreamOverload) Mark() {
	u.until.Store(time.Now().UnixNano() + int64(schedHold))
}

// Recent reports whether an upstream refused for overload in the last
// second; false for nil.
func (u *UpstreamOverload) Recent() bool {
	return u != nil && time.Now().UnixNano() < u.until.Load()
}

// Defaults of the shedding flags.
const (
	DefaultShedMinLimit = 32
	DefaultShedMaxLimit = 256
	// DefaultShedMaxWait: refused at once. A call over the limit is
	// refused only while the process is short of CPU, and then a wait
	// is one more wake-up on a full run queue: measured (the system on
	// one CPU at 4x its knee, three 5 s runs each), 5 ms of queueing took
	// refusals from p50 7.7-8.3 ms to 15.5-15.7 ms and created orders'
	// p99 from 66-87 ms to 88-94 ms, for no more orders created.
	DefaultShedMaxWait  = 0
	DefaultShedPushback = 250 * time.Millisecond
	// DefaultShedLatencyTarget: the adaptive limit learns from windows of
	// a second and more, so under a sudden overload it sits where it
	// started (64 in flight): on the split system, at ~420 orders/s,
	// ~150 ms of work. Measured, scenario 8 quick, interleaved against
	// --shed-latency-target 0, two runs each, at 4x: all in one, created
	// p99 75-86 vs 133-172 ms, refusals p50 8.0-8.6 vs 14.0-14.2 ms, the
	// same goodput (651-753 vs 646-675/s); split, at 2x 154-172 vs
	// 1081-1105 ms, at 4x 131-201 vs 292-372 ms. A floor of 8 instead
	// of --shed-min-limit refused calls of a process just started (the
	// chaos suite); 25 ms cut goodput to 63-73 % of the knee.
	DefaultShedLatencyTarget = 40 * time.Millisecond
	// DefaultShedRunQueue: a process keeping up has, most of the time,
	// less than one goroutine waiting per CPU; one with more work than
	// CPUs, many (docs/resilience.md, "Overload", has the measurements).
	DefaultShedRunQueue = 1.0
	// DefaultShedCPUShare: docs/resilience.md, "--shed-cpu-share", has
	// the measurements (0.3 for a day: better split-profile p99 under
	// overload, but the chaos suite's kill-NATS scenario refused legitimate
	// orders at a quarter of capacity in CI).
	DefaultShedCPUShare = 0.5
	// The scheduler signal's window and hold: saturated from
	// the first window over the target — a short window, since every
	// window the limit is not applied lets a flood in — and for a second
	// after the last one, so that the limit does not switch on and off
	// with every window.
	schedWindow = 50 * time.Millisecond
	schedHold   = time.Second
)

// RegisterFlags defines shed, shed-min-limit, shed-max-limit,
// shed-max-wait, shed-pushback, shed-latency-target, shed-run-queue,
// shed-cpu-share and shed-cpu-millis, prefixed.
func (c *ShedConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.BoolVar(&c.Enabled, prefix+"shed", true, "adaptive concurrency limit on every gRPC server's API (failsafe-go adaptivelimiter): a call over it, while the process is short of CPU (--shed-run-queue), gets RESOURCE_EXHAUSTED with a retry delay (at once, or after up to --shed-max-wait); --shed=false turns it off")
	fs.UintVar(&c.MinLimit, prefix+"shed-min-limit", DefaultShedMinLimit, "lowest concurrency limit the shedding limiter may reach")
	fs.UintVar(&c.MaxLimit, prefix+"shed-max-limit", DefaultShedMaxLimit, "highest concurrency limit the shedding limiter may reach")
	fs.DurationVar(&c.MaxWait, prefix+"shed-max-wait", DefaultShedMaxWait, "longest a call over the limit waits for a slot under --shed before it is refused (0: refused at once)")
	fs.DurationVar(&c.Pushback, prefix+"shed-pushback", DefaultShedPushback, "retry delay told to callers refused by --shed (grpc-retry-pushback-ms, RetryInfo), jittered ±50%")
	fs.DurationVar(&c.LatencyTarget, prefix+"shed-latency-target", DefaultShedLatencyTarget, "while the process is short of CPU (or an upstream sheds), at most this much work in flight: calls completed per second (last 200 ms) times this, never under --shed-min-limit; calls past it are refused like calls over the limit (0: off)")
	fs.Float64Var(&c.RunQueue, prefix+"shed-run-queue", DefaultShedRunQueue, "goroutines waiting for a CPU, per CPU (median of 50 ms windows, or three samples in a row over 8x it), above which — while the process uses at least --shed-cpu-share of its CPUs — it is short of CPU; only then does --shed refuse calls over its limit (0: refuse over the limit whatever the cause)")
	fs.Float64Var(&c.CPUShare, prefix+"shed-cpu-share", DefaultShedCPUShare, "share of its CPUs (GOMAXPROCS, the cgroup's CPU limit where lower, or --shed-cpu-millis) the process must use in a window for a long run queue (--shed-run-queue) to mean short of CPU; under it the process counts as starved by other processes and admits calls over its limit (0: the run queue alone decides; at most 1)")
	fs.UintVar(&c.CPUMillis, prefix+"shed-cpu-millis", 0, "CPU the process is entitled to, in thousandths of a CPU (its Kubernetes CPU request): --shed-cpu-share is measured against it where it is under GOMAXPROCS and the cgroup's CPU limit (0: GOMAXPROCS, or the cgroup's CPU limit where lower)")
}

// Validate reports settings that cannot work.
func (c *ShedConfig) Validate() error {
	if !c.Enabled {
		return nil
	}
	if c.MinLimit == 0 || c.MaxLimit < c.MinLimit || c.MaxWait < 0 || c.LatencyTarget < 0 || c.Pushback <= 0 || !(c.RunQueue >= 0) || math.IsInf(c.RunQueue, 1) || !(c.CPUShare >= 0 && c.CPUShare <= 1) {
		return errors.New("--shed-min-limit must be positive and at most --shed-max-limit, --shed-max-wait, --shed-latency-target and --shed-run-queue not negative (and finite), --shed-cpu-share from 0 to 1, --shed-pushback positive")
	}
	return nil
}

// Limiter is one server's shedding limiter and its gauges: every mesh
// gRPC server's when Shed is on (admission), and the gateway's HTTP API's
// (--shed-gateway), with the same settings and metrics.
//
// Two signals decide together. The adaptive limiter (failsafe-go) learns
// from latency how many calls the server does well at once; the scheduler
// (saturation) tells whether the process is short of CPU. A call within
// the limit is admitted. A call over it is admitted too while the process
// is not short of CPU — the latency that lowered the limit came from
// elsewhere: a slow upstream, database or network, which refusing calls
// would not relieve — and counted as such
// (trellis_server_over_limit_admitted_total). Only over the limit and
// short of CPU is a call refused (at once, or after waiting up to MaxWait
// for a slot).
type Limiter struct {
	lim                     adaptivelimiter.AdaptiveLimiter[any]
	cfg                     ShedConfig
	m                       *Metrics
	saturated               func() bool
	sched                   *saturation
	admitted, overLimit     prometheus.Counter
	limit, inflight, queued prometheus.Gauge
	running                 atomic.Int64 // admitted, not yet released
	done                    completions
}

// completions counts released calls in 50 ms buckets.
type completions struct {
	mu      sync.Mutex
	buckets [5]struct{ idx, n int64 }
}

const bucketNs = int64(50 * time.Millisecond)

func (c *completions) add(now int64) {
	i := now / bucketNs
	c.mu.Lock()
	b := &c.buckets[i%int64(len(c.buckets))]
	if b.idx != i {
		b.idx, b.n = i, 0
	}
	b.n++
	c.mu.Unlock()
}

// perSecond is the completions of the last four whole buckets, per second.
func (c *completions) perSecond(now int64) float64 {
	i := now / bucketNs
	var n int64
	c.mu.Lock()
	for _, b := range c.buckets {
		if b.idx < i && b.idx >= i-4 {
			n += b.n
		}
	}
	c.mu.Unlock()
	return float64(n) / (4 * float64(bucketNs) / 1e9)
}

// exportShedMetrics makes a server's shedding series exist (at zero)
// whether or not it sheds, so dashboards and alerts find them.
func exportShedMetrics(m *Metrics, name string) {
	m.admitted.WithLabelValues(name)
	m.overLimit.WithLabelValues(name)
	m.limit.WithLabelValues(name)
	m.inflight.WithLabelValues(name)
	m.queued.WithLabelValues(name)
}

// NewLimiter returns the limiter of the server name (cfg.Enabled is not
// consulted: a Limiter always limits).
func NewLimiter(cfg ShedConfig, name string, m *Metrics) *Limiter {
	lim := adaptivelimiter.NewBuilder[any]().
		WithLimits(cfg.MinLimit, cfg.MaxLimit, min(2*cfg.MinLimit, cfg.MaxLimit)).
		WithQueueing(2, 3). // a queue up to twice the limit, refusals growing towards three times
		WithMaxWaitTime(cfg.MaxWait).
		Build()
	l := &Limiter{lim: lim, cfg: cfg, m: m, saturated: cfg.Saturated,
		admitted: m.admitted.WithLabelValues(name), overLimit: m.overLimit.WithLabelValues(name),
		limit: m.limit.WithLabelValues(name), inflight: m.inflight.WithLabelValues(name), queued: m.queued.WithLabelValues(name)}
	switch {
	case l.saturated != nil:
	case cfg.RunQueue > 0:
		l.sched = m.sharedSaturation(cfg.RunQueue, cfg.CPUShare, float64(cfg.CPUMillis)/1000)
		l.saturated = l.sched.Saturated
	default:
		l.saturated = func() bool { return true }
	}
	l.limit.Set(float64(lim.Limit()))
	return l
}

// Admit admits a call within the limit at once, and one over it at once
// while the process is not short of CPU and no upstream of it sheds
// (cfg.Upstream). While either is the case, a call over the limit is
// refused — and so is one within it while the calls in flight exceed what
// the server completes in cfg.LatencyTarget — at once, or, with MaxWait
// set, after waiting up to MaxWait for a slot. Admitted, it returns the
// function that frees the slot (Release); refused, the retry delay to
// tell the caller (jittered), counted as refused for route — unless ctx
// ended while waiting (then ok is false, the retry delay 0 and nothing
// is counted: the caller left, the server did not refuse).
func (l *Limiter) Admit(ctx context.Context, route string) (release Release, retry time.Duration, ok bool) {
	// The call's slot in running is taken first and given back on
	// refusal, so calls arriving together cannot pass the cap together.
	// The cap is never under MinLimit: below it, no clock and no lock.
	n := float64(l.running.Add(1) - 1)
	if t := l.cfg.LatencyTarget; t > 0 && n >= float64(l.cfg.MinLimit) &&
		n >= l.done.perSecond(time.Now().UnixNano())*t.Seconds() {
		if reason := l.short(); reason != "" {
			return l.refuse(route, reason)
		}
	}
	if permit, ok := l.lim.TryAcquirePermit(); ok {
		return l.admit(permit), 0, true
	}
	reason := l.short()
	if reason == "" {
		l.overLimit.Inc()
		l.admitted.Inc()
		l.observe()
		return l.end, 0, true
	}
	if l.cfg.MaxWait > 0 { // else refused at once: no timer, no queue
		start := time.Now()
		permit, err := l.lim.AcquirePermitWithMaxWait(ctx, l.cfg.MaxWait)
		l.m.queueSeconds.Observe(time.Since(start).Seconds())
		if err == nil {
			return l.admit(permit), 0, true
		}
		if ctx.Err() != nil {
			l.running.Add(-1)
			l.observe()
			return nil, 0, false
		}
	}
	return l.refuse(route, reason)
}

// short says why calls past the limit are refused now — the process is
// short of CPU ("overload") or an upstream sheds ("upstream_overload") —
// or "" when they are admitted.
func (l *Limiter) short() string {
	switch {
	case l.saturated():
		return "overload"
	case l.cfg.Upstream.Recent():
		return "upstream_overload"
	}
	return ""
}

func (l *Limiter) refuse(route, reason string) (Release, time.Duration, bool) {
	l.running.Add(-1)
	l.observe()
	l.m.refused.WithLabelValues(route, reason).Inc()
	return nil, l.cfg.Pushback/2 + rand.N(l.cfg.Pushback+1), false
}

// Release ends an admitted call. shed reports that the call ended refused
// for overload behind this server (an upstream's RESOURCE_EXHAUSTED, the
// gateway's 429 for it): this server did not serve it, so it is not a
// completion — its duration teaches the adaptive limiter nothing (the
// permit is dropped, not recorded) and it does not count in the
// throughput that LatencyTarget multiplies. Counted, an overloaded
// upstream's fast refusals would raise the limit and the cap of the
// server in front of it — most where that server has CPU to spare and
// sheds only on the upstream's signal (upstream_overload) — and it would
// pass more calls on to be refused behind it.
type Release func(shed bool)

func (l *Limiter) admit(permit adaptivelimiter.Permit) Release {
	l.admitted.Inc()
	l.observe()
	return func(shed bool) {
		if shed {
			permit.Drop()
		} else {
			permit.Record()
		}
		l.end(shed)
	}
}

// end ends an admitted call (Release without the permit).
func (l *Limiter) end(shed bool) {
	l.running.Add(-1)
	if !shed {
		l.done.add(time.Now().UnixNano())
	}
	l.observe()
}

func (l *Limiter) observe() {
	l.limit.Set(float64(l.lim.Limit()))
	l.inflight.Set(float64(l.lim.Inflight()))
	l.queued.Set(float64(l.lim.Queued()))
	if l.sched != nil {
		l.sched.Saturated() // the gauge follows the signal under any load
		l.m.runQueue.Set(l.sched.RunQueue())
	}
}

// pushbackKey is the trailer of a refusal that tells gRPC's retry when to
// try again (gRFC A6); only admission sets it.
const pushbackKey = "grpc-retry-pushback-ms"

// overloaded is the refusal's message; the details say when to retry.
const overloaded = "the server is overloaded: retry after the delay in RetryInfo (grpc-retry-pushback-ms)"

// admission is the first link of a shedding server's chain: it decides
// whether a call is worked on at all, before request ids, logs,
// authorization or validation are spent on it. The request message has
// been received and decoded by then (grpc-go decodes before the unary
// chain runs), so a client that trickles its body holds no slot. Methods
// not registered through Register (health, reflection) are never shed.
func admission(l *Limiter, registered serviceTimes) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if _, ok := registered[info.FullMethod]; !ok {
			return handler(ctx, req)
		}
		release, delay, ok := l.Admit(ctx, info.FullMethod)
		if !ok {
			if ctx.Err() != nil {
				return nil, status.FromContextError(ctx.Err()).Err()
			}
			_ = grpc.SetTrailer(ctx, metadata.Pairs(pushbackKey, strconv.FormatInt(delay.Milliseconds(), 10)))
			st, _ := status.New(codes.ResourceExhausted, overloaded).WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(delay)})
			return nil, st.Err()
		}
		shed := false
		defer func() { release(shed) }()
		resp, err := handler(ctx, req)
		shed = err != nil && status.Code(err) == codes.ResourceExhausted
		return resp, err
	}
}
