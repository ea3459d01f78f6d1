package gateway

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/apperr"
	"github.com/trellis-mesh/trellis/mesh"
)

// RequestIDHeader is the HTTP header carrying the request id.
const RequestIDHeader = "X-Request-Id"

// headerPolicy is the deny-by-default header policy: besides
// Authorization (which grpc-gateway always forwards) and the request id
// (sent by the mesh client from the context), only W3C trace context
// and If-Match (the etag a change is conditional on) reach the services —
// trace context as it came when the gateway does not trace, or
// through the gateway's own spans when it does (the tracing client sends
// it; passing the raw header too would send it twice). Grpc-Metadata-*,
// X-User-Id and everything else a client sends stays at the edge.
func headerPolicy(tracing bool) func(string) (string, bool) {
	return func(key string) (string, bool) {
		switch k := strings.ToLower(key); k {
		case "traceparent", "tracestate":
			return k, !tracing
		case mesh.IfMatchHeader: // the etag precondition of a change
			return k, true
		}
		return "", false
	}
}

// validRequestID accepts client ids of up to 128 URL-safe characters;
// anything else is replaced, so ids are safe to log and to echo.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// withRequestID takes the client's X-Request-Id or makes one, echoes it in
// the response and puts it in the context, from where the mesh client
// sends it to every upstream.
func (g *Gateway) withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(RequestIDHeader)
		if !validRequestID(id) {
			id = mesh.NewRequestID() // a counter, not a random UUID: no syscall per request
		}
		w.Header().Set(RequestIDHeader, id)
		next.ServeHTTP(w, r.WithContext(mesh.WithRequestID(r.Context(), id)))
	})
}

// recoverPanics turns a panic into a 500 "internal error" and a log line
// with the stack.
func (g *Gateway) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				g.log.Error("panic in gateway", "request_id", mesh.RequestID(r.Context()), "panic", p, "stack", string(debug.Stack()))
				g.writeStatus(w, http.StatusInternalServerError, status.Convert(mesh.InternalError(r.Context())))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// cors answers browsers from the allowed origins. Requests without an
// Origin (curl, same-origin GETs) pass untouched; a preflight from an
// origin not on the list gets 403 and no CORS headers.
func (g *Gateway) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Add("Vary", "Origin")
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		allowed := slices.Contains(g.cfg.CORSOrigins, origin)
		switch {
		case allowed && preflight:
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Methods", "GET, POST, PATCH, DELETE")
			h.Set("Access-Control-Allow-Headers", "Content-Type, Authorization, If-Match, X-Request-Id, traceparent, tracestate")
			h.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
		case allowed:
			w.Header().Set("Access-Control-Allow-Origin", origin)
			w.Header().Set("Access-Control-Expose-Headers", "X-Request-Id, Location, ETag")
			next.ServeHTTP(w, r)
		case preflight:
			g.writeStatus(w, http.StatusForbidden, status.Newf(codes.PermissionDenied, "origin %s is not allowed", origin))
		default:
			next.ServeHTTP(w, r) // same-origin, or the browser will block the answer
		}
	})
}

// limitedBody notes when a body went over the limit, so the error handler
// can answer 413 instead of a decoding error.
type limitedBody struct {
	io.ReadCloser
	exceeded bool
}

func (l *limitedBody) Read(p []byte) (int, error) {
	n, err := l.ReadCloser.Read(p)
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		l.exceeded = true
	}
	return n, err
}

type limitKey struct{}

// limitBody refuses bodies over MaxBodyBytes: at once when Content-Length
// says so, else when reading crosses the limit.
func (g *Gateway) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > g.cfg.MaxBodyBytes {
			g.writeStatus(w, http.StatusRequestEntityTooLarge, status.Newf(codes.InvalidArgument, "request body is larger than %d bytes", g.cfg.MaxBodyBytes))
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			lb := &limitedBody{ReadCloser: http.MaxBytesReader(w, r.Body, g.cfg.MaxBodyBytes)}
			r = r.WithContext(context.WithValue(r.Context(), limitKey{}, lb))
			r.Body = lb
		}
		next.ServeHTTP(w, r)
	})
}

func bodyTooLarge(r *http.Request) bool {
	lb, _ := r.Context().Value(limitKey{}).(*limitedBody)
	return lb != nil && lb.exceeded
}

// httpSemantics gives REST answers their status: 201 with Location for
// creates, 204 with no body for deletes; and an ETag header wherever the
// answer is one user or order (send it back as If-Match to change it
// conditionally).
func httpSemantics(_ context.Context, w http.ResponseWriter, m proto.Message) error {
	if e, ok := m.(interface{ GetUser() *userv1.User }); ok && e.GetUser().GetEtag() != "" {
		w.Header().Set("ETag", `"`+e.GetUser().GetEtag()+`"`)
	}
	if e, ok := m.(interface{ GetOrder() *orderv1.Order }); ok && e.GetOrder().GetEtag() != "" {
		w.Header().Set("ETag", `"`+e.GetOrder().GetEtag()+`"`)
	}
	switch m := m.(type) {
	case *userv1.CreateUserResponse:
		w.Header().Set("Location", "/api/v1/users/"+m.GetUser().GetId())
		w.WriteHeader(http.StatusCreated)
	case *orderv1.CreateOrderResponse:
		w.Header().Set("Location", "/api/v1/orders/"+m.GetOrder().GetId())
		w.WriteHeader(http.StatusCreated)
	case *userv1.DeleteUserResponse:
		w.WriteHeader(http.StatusNoContent)
	}
	return nil
}

// httpMetrics are the RED metrics of the gateway, labelled by route
// pattern (/api/v1/users/{id}), never by raw path.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
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
	reg.MustRegister(m.requests, m.duration)
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

// apiEdge checks what every API request carries before any route sees it:
//   - the path and every query parameter are valid UTF-8 (protobuf strings
//     must be; an invalid one is the client's mistake, answered 400 naming
//     the parameter, never sent upstream);
//   - a request with a body says it is JSON (415 otherwise): a browser
//     form cannot send application/json across origins without a CORS
//     preflight, so this is also the CSRF defence;
//   - HEAD is served as GET without the body.
func (g *Gateway) apiEdge(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !utf8.ValidString(r.URL.Path) {
			g.writeStatus(w, http.StatusBadRequest, badParam("path", "the path is not valid UTF-8 once percent-decoded"))
			return
		}
		query, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			g.writeStatus(w, http.StatusBadRequest, badParam("query", "the query string is not valid percent-encoding"))
			return
		}
		for k, vs := range query {
			if !utf8.ValidString(k) {
				g.writeStatus(w, http.StatusBadRequest, badParam("query", "a query parameter name is not valid UTF-8"))
				return
			}
			for _, v := range vs {
				if !utf8.ValidString(v) {
					g.writeStatus(w, http.StatusBadRequest, badParam(k, "not valid UTF-8 once percent-decoded"))
					return
				}
			}
		}
		switch r.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch:
			ct := r.Header.Get("Content-Type")
			hasBody := r.ContentLength != 0
			if ct == "" && !hasBody {
				break
			}
			if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
				g.writeStatus(w, http.StatusUnsupportedMediaType, status.New(codes.InvalidArgument, "request bodies must be JSON: send Content-Type: application/json"))
				return
			}
		case http.MethodHead:
			r = r.Clone(r.Context())
			r.Method = http.MethodGet // net/http sends no body for HEAD
		}
		next.ServeHTTP(w, r)
	})
}

// badParam is the INVALID_ARGUMENT of one bad request parameter, in the
// same shape as the services' field violations.
func badParam(field, desc string) *status.Status {
	return apperr.InvalidArgument([]*errdetails.BadRequest_FieldViolation{{Field: field, Description: desc}})
}

// noDirectoryListing answers 404 for directories: the file server would
// list their contents.
func noDirectoryListing(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}
