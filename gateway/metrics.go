package gateway

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
)

// httpMetrics are the RED metrics of the gateway, labelled by route
// pattern (/api/v1/users/{id}), never by raw path.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// The listener's connections (LimitConnections).
	conns        prometheus.Gauge
	connsRefused *prometheus.CounterVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_requests_total",
			Help: "HTTP requests served by the gateway, by method, route pattern and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "http_request_duration_seconds",
			Help:    "Time to serve HTTP requests, by method and route pattern.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method", "route"}),
	}
	m.conns = prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_gateway_connections",
		Help: "Connections the gateway holds open (counted while --http-max-conns or --http-max-conns-per-client is set)."})
	m.connsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_gateway_connections_refused_total",
		Help: "Connections the gateway answered and closed at once, by the limit they were over: per_client (--http-max-conns-per-client, 429) or max (--http-max-conns, 503)."}, []string{"reason"})
	m.connsRefused.WithLabelValues("per_client")
	m.connsRefused.WithLabelValues("max")
	reg.MustRegister(m.requests, m.duration, m.conns, m.connsRefused)
	return m
}

// routeHolder is filled in by whichever router matches the request.
type routeHolder struct{ route string }

type routeKey struct{}

func setRoute(ctx context.Context, route string) {
	if h, _ := ctx.Value(routeKey{}).(*routeHolder); h != nil {
		h.route = route
	}
}

// recordRoute runs inside grpc-gateway (as a metadata annotator), where
// the matched pattern is known.
func recordRoute(ctx context.Context, r *http.Request) metadata.MD {
	if p, ok := runtime.HTTPPathPattern(ctx); ok {
		setRoute(r.Context(), p)
	}
	return nil
}

// knownMethods bounds the method label: anything else is "OTHER".
var knownMethods = []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodPut, http.MethodDelete, http.MethodOptions, http.MethodHead}

// measure counts and times every request under its route pattern.
func (g *Gateway) measure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		holder := &routeHolder{}
		r = r.WithContext(context.WithValue(r.Context(), routeKey{}, holder))
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rec, r)
		route := holder.route
		if route == "" {
			route = r.Pattern // set by the root mux on this request
			if route == "" || route == "/" || route == "/api/" {
				route = "unmatched"
			}
		}
		// The server span (when tracing) is named after the route too.
		if span := trace.SpanFromContext(r.Context()); span.IsRecording() {
			span.SetName(r.Method + " " + route)
		}
		method := r.Method
		if !slices.Contains(knownMethods, method) {
			method = "OTHER"
		}
		g.metrics.requests.WithLabelValues(method, route, codeLabel(rec.code)).Inc()
		g.metrics.duration.WithLabelValues(method, route).Observe(time.Since(start).Seconds())
	})
}

// codeLabels are the status code labels, made once: strconv.Itoa
// allocates for every code over 99.
var codeLabels = func() (l [600]string) {
	for i := range l {
		l[i] = strconv.Itoa(i)
	}
	return l
}()

func codeLabel(code int) string {
	if code >= 0 && code < len(codeLabels) {
		return codeLabels[code]
	}
	return strconv.Itoa(code)
}

// statusRecorder remembers the status code and drops bodies a 204 must
// not have (grpc-gateway writes "{}" for empty messages).
type statusRecorder struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.wroteHeader {
		return
	}
	s.code, s.wroteHeader = code, true
	if code == http.StatusNoContent {
		s.ResponseWriter.Header().Del("Content-Type") // 204 has no content
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if !s.wroteHeader {
		s.WriteHeader(http.StatusOK)
	}
	if s.code == http.StatusNoContent {
		return len(b), nil
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the real writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
