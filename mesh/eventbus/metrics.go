package eventbus

import "github.com/prometheus/client_golang/prometheus"

// Metrics of the relays and consumers of one process.
type Metrics struct {
	pending     *prometheus.GaugeVec
	lag         *prometheus.HistogramVec
	published   *prometheus.CounterVec
	errors      *prometheus.CounterVec
	handled     *prometheus.CounterVec
	redelivered *prometheus.CounterVec
}

// NewMetrics registers the event metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "trellis_outbox_pending",
			Help: "Outbox rows committed but not yet acknowledged by JetStream.",
		}, []string{"service"}),
		lag: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "trellis_outbox_publish_lag_seconds",
			Help:    "Time from an event's commit to JetStream's ack of it.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"service"}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_outbox_published_total",
			Help: "Events acknowledged by JetStream and marked sent.",
		}, []string{"service"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_outbox_errors_total",
			Help: "Relay passes that failed (NATS or database unavailable); the relay retries with backoff.",
		}, []string{"service"}),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_consumer_handled_total",
			Help: "Event deliveries handled by a consumer, by result (ok, duplicate, retry, dropped).",
		}, []string{"consumer", "result"}),
		redelivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_consumer_redeliveries_total",
			Help: "Deliveries that JetStream had delivered before (a previous attempt failed or timed out).",
		}, []string{"consumer"}),
	}
	reg.MustRegister(m.pending, m.lag, m.published, m.errors, m.handled, m.redelivered)
	return m
}
