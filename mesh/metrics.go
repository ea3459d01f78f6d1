package mesh

import (
	"sync"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds every collector the mesh records into. Build one per
// process (per registry) and share it between the servers and clients of
// that process; collectors are labelled by service, method, caller and upstream.
type Metrics struct {
	server             *grpcprom.ServerMetrics
	client             *grpcprom.ClientMetrics
	breakerState       *prometheus.GaugeVec
	breakerTransitions *prometheus.CounterVec
	breakerRejected    *prometheus.CounterVec
	authzDenied        *prometheus.CounterVec
	refused            *prometheus.CounterVec
	// Load shedding (ShedConfig), by server.
	admitted, overLimit *prometheus.CounterVec
	runQueue            prometheus.Gauge
	cpus                prometheus.Gauge
	// Connections of every server (ServerConfig.Conns), by server.
	conns                   *prometheus.GaugeVec
	connsRefused            *prometheus.CounterVec
	limit, inflight, queued *prometheus.GaugeVec
	queueSeconds            prometheus.Histogram

	// signals: the process's CPU signal (saturation), one per setting —
	// in practice one, shared by every shedding limiter of the process
	// (sharedSaturation).
	signalsMu sync.Mutex
	signals   map[signalKey]*saturation
}

// signalKey is what a CPU signal is built from (ShedConfig's RunQueue,
// CPUShare and CPUMillis).
type signalKey struct {
	target, share, entitled float64
}

// sharedSaturation is the process's CPU signal for these settings: one
// sampler, one window and one decision for every limiter that asks —
// the run queue and the CPU the signal reads are the process's, not a
// server's. (A signal per limiter sampled the same scheduler three times
// over in `trellis run`, closed its windows at different moments, so the
// gateway could read "short of CPU" while the order service beside it did
// not, and wrote the same process-wide gauges from three samplers.)
func (m *Metrics) sharedSaturation(target, share, entitled float64) *saturation {
	k := signalKey{target, share, entitled}
	m.signalsMu.Lock()
	defer m.signalsMu.Unlock()
	s, ok := m.signals[k]
	if !ok {
		if m.signals == nil {
			m.signals = map[signalKey]*saturation{}
		}
		s = newSaturation(target, share, entitled, m.cpus, schedWindow, schedHold)
		m.signals[k] = s
	}
	return s
}

// latencyBuckets suit loopback and LAN calls: 0.5 ms to 10 s.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// NewMetrics creates the mesh collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		server: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(latencyBuckets))),
		client: grpcprom.NewClientMetrics(grpcprom.WithClientHandlingTimeHistogram(grpcprom.WithHistogramBuckets(latencyBuckets))),
		breakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trellis_breaker_state",
			Help: "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
		}, []string{"caller", "upstream"}),
		breakerTransitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_breaker_transitions_total",
			Help: "Circuit breaker state changes per upstream.",
		}, []string{"caller", "upstream", "from", "to"}),
		breakerRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_breaker_rejected_total",
			Help: "Calls answered UNAVAILABLE by an open (or saturated half-open) breaker without reaching the upstream.",
		}, []string{"caller", "upstream"}),
		authzDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_authz_denied_total",
			Help: "Calls refused by the per-method authorization policy, by caller (the peer's SPIFFE ID, or unauthenticated) and method.",
		}, []string{"caller", "method"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_server_refused_total",
			Help: "Calls a server refused before its handler ran, by method and reason (deadline: too short for what the method usually takes; overload: no slot under --shed while short of CPU; upstream_overload: no slot while an upstream sheds).",
		}, []string{"method", "reason"}),
	}
	m.admitted = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_server_admitted_total",
		Help: "Calls a shedding server (--shed) admitted to its handlers, by server."}, []string{"server"})
	m.overLimit = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_server_over_limit_admitted_total",
		Help: "Calls over a shedding server's concurrency limit that it admitted because the process was not short of CPU (the latency that lowered the limit came from a slow upstream, database or network), by server."}, []string{"server"})
	m.runQueue = prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_process_run_queue",
		Help: "Goroutines ready to run but waiting for a CPU, per CPU (GOMAXPROCS), the median of the last 50 ms window: the shedding limiters' sign of a process short of CPU (--shed-run-queue)."})
	m.cpus = prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_process_cpus",
		Help: "CPUs the shedding limiters measure the process's CPU use against (--shed-cpu-share): GOMAXPROCS, the cgroup's CPU limit where lower, or --shed-cpu-millis."})
	m.conns = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "trellis_server_connections",
		Help: "Connections a gRPC server holds open, by server (counted while --grpc-max-conns or --grpc-max-conns-per-client is set)."}, []string{"server"})
	m.connsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_server_connections_refused_total",
		Help: "Connections a gRPC server closed at once, before the TLS handshake, by server and the limit they were over: per_client (--grpc-max-conns-per-client) or max (--grpc-max-conns)."}, []string{"server", "reason"})
	m.limit = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "trellis_server_concurrency_limit",
		Help: "The adaptive concurrency limit of a shedding server (--shed), by server."}, []string{"server"})
	m.inflight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "trellis_server_inflight",
		Help: "Calls a shedding server (--shed) is working on, by server."}, []string{"server"})
	m.queued = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "trellis_server_queued",
		Help: "Calls waiting for a slot on a shedding server (--shed), by server."}, []string{"server"})
	m.queueSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "trellis_server_queue_seconds",
		Help:    "Time calls waited for a slot on a shedding server (--shed), admitted or not.",
		Buckets: []float64{0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25}})
	reg.MustRegister(m.server, m.client, m.breakerState, m.breakerTransitions, m.breakerRejected, m.authzDenied, m.refused,
		m.admitted, m.overLimit, m.runQueue, m.cpus, m.conns, m.connsRefused, m.limit, m.inflight, m.queued, m.queueSeconds)
	return m
}
