// Package gateway is Trellis's REST facade for browsers and curl: the
// grpc-gateway v2 handlers generated from proto/ and gateway/http.yaml,
// dialling the services through mesh clients, behind an HTTP edge that
// behaves like a public API — one JSON error shape, request ids, body
// limits, deny-by-default header forwarding, CORS, route-pattern metrics —
// plus health endpoints, the OpenAPI document, a user overview that
// degrades when the order service is down, and a small browser page.
package gateway

import (
	"context"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/mesh"
)

// Config tunes the gateway. Zero fields take the documented defaults.
type Config struct {
	// CORSOrigins lists the origins (scheme://host[:port]) allowed to call
	// the API from a browser. Empty: same-origin only.
	CORSOrigins []string
	// UpstreamTimeout is the mesh clients' deadline for each upstream call
	// (--upstream-timeout): a client's Grpc-Timeout shorter than it is the
	// deadline that binds, and its running out is the client's (408), not
	// the upstream's (504). Zero: every client deadline binds.
	UpstreamTimeout time.Duration
	// Limits are the per-client rate limits of the API. The zero value
	// limits nothing; the flags' defaults are DefaultReadQuota and its
	// siblings.
	Limits RateLimits
	// Conns are the listener's connection limits (LimitConnections). The
	// zero value limits nothing; the flags' defaults are DefaultMaxConns
	// and DefaultMaxConnsPerClient.
	Conns ConnLimits
	// MaxBodyBytes caps request bodies; larger ones get 413. Default 1 MiB.
	MaxBodyBytes int64
	// OverviewTimeout is the shared deadline of the overview's two upstream
	// calls. Default 3s.
	OverviewTimeout time.Duration
	// OverviewOrders is how many recent orders the overview shows.
	// Default 10.
	OverviewOrders int32
	// Shedder, when set, limits the API's concurrency (--shed-gateway).
	Shedder *mesh.Limiter
	// Shed is --shed-gateway: the app builds Shedder from it.
	Shed bool
	// Tokens verifies access tokens at the edge (the services check them
	// again). Nil: tokens are checked only by the services.
	Tokens mesh.TokenVerifier
	// Tracer, when set, gives every request a server span (continuing a
	// traceparent the client sent) that the gRPC calls continue. Nil: the
	// client's traceparent is passed on as it came.
	Tracer trace.TracerProvider
}

// RegisterFlags defines cors-origins, shed-gateway, the rate limits' and
// the connection limits' flags, prefixed.
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.Var((*originList)(&c.CORSOrigins), prefix+"cors-origins", "comma list of browser origins (https://app.example.com) allowed to call the gateway; empty: same-origin only")
	fs.BoolVar(&c.Shed, prefix+"shed-gateway", true, "adaptive concurrency limit on the gateway's API too, with --shed's settings (and only with --shed): over it, 429 with Retry-After")
	c.Limits.RegisterFlags(prefix, fs)
	c.Conns.RegisterFlags(prefix, fs)
}

// Validate reports settings that cannot work.
func (c *Config) Validate() error {
	for _, o := range c.CORSOrigins {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" {
			return fmt.Errorf("--cors-origins: %q is not an origin (scheme://host[:port])", o)
		}
	}
	return errors.Join(c.Limits.Validate(), c.Conns.Validate())
}

// originList is a flag.Value of comma-separated origins.
type originList []string

func (l *originList) String() string { return strings.Join(*l, ",") }

func (l *originList) Set(v string) error {
	*l = nil
	for _, o := range strings.Split(v, ",") {
		if o = strings.TrimSpace(o); o != "" {
			*l = append(*l, strings.TrimSuffix(o, "/"))
		}
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.OverviewTimeout <= 0 {
		c.OverviewTimeout = 3 * time.Second
	}
	if c.OverviewOrders <= 0 {
		c.OverviewOrders = 10
	}
	return c
}

// Gateway is the HTTP handler of the REST facade.
type Gateway struct {
	cfg     Config
	log     *slog.Logger
	users   userv1.UserServiceClient
	auth    userv1.AuthServiceClient
	orders  orderv1.OrderServiceClient
	health  map[string]healthpb.HealthClient // upstream service name -> its health client
	mux     *runtime.ServeMux
	handler http.Handler
	metrics *httpMetrics
	limits  *rateLimiter
	keyer   *clientKeyer // who a connection's client is (LimitConnections)
	openapi []byte
}

//go:embed web openapi/trellis.swagger.json overview.openapi.json
var assets embed.FS

// New builds the gateway over connections to the user and order services
// (mesh clients: breaker, default deadline, metrics). HTTP metrics are
// registered on reg; the admin server serves them.
func New(cfg Config, userConn, orderConn grpc.ClientConnInterface, log *slog.Logger, reg prometheus.Registerer) (*Gateway, error) {
	cfg = cfg.withDefaults()
	spec, err := openAPIDocument()
	if err != nil {
		return nil, err
	}
	g := &Gateway{
		cfg:    cfg,
		log:    log,
		users:  userv1.NewUserServiceClient(userConn),
		auth:   userv1.NewAuthServiceClient(userConn),
		orders: orderv1.NewOrderServiceClient(orderConn),
		health: map[string]healthpb.HealthClient{
			userv1.UserService_ServiceDesc.ServiceName:   healthpb.NewHealthClient(userConn),
			orderv1.OrderService_ServiceDesc.ServiceName: healthpb.NewHealthClient(orderConn),
		},
		metrics: newHTTPMetrics(reg),
		openapi: spec,
	}
	if g.limits, err = newRateLimiter(cfg.Limits, reg, g.log); err != nil {
		return nil, err
	}
	if g.keyer, err = newClientKeyer(cfg.Limits); err != nil {
		return nil, err
	}
	g.mux = runtime.NewServeMux(
		runtime.WithIncomingHeaderMatcher(headerPolicy(cfg.Tracer != nil)),
		runtime.WithOutgoingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithOutgoingTrailerMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, marshaler),
		runtime.WithErrorHandler(g.writeError),
		runtime.WithRoutingErrorHandler(g.routingError),
		runtime.WithForwardResponseOption(httpSemantics),
		runtime.WithMetadata(recordRoute),
		runtime.WithDisablePathLengthFallback(),
	)
	ctx := context.Background()
	if err := userv1.RegisterUserServiceHandlerClient(ctx, g.mux, g.users); err != nil {
		return nil, err
	}
	if err := orderv1.RegisterOrderServiceHandlerClient(ctx, g.mux, g.orders); err != nil {
		return nil, err
	}
	if err := userv1.RegisterAuthServiceHandlerClient(ctx, g.mux, g.auth); err != nil {
		return nil, err
	}
	// Registered after the generated handlers so it is matched first: the
	// mux tries the newest pattern first, and GetUser's {id} would
	// otherwise never see the :overview verb.
	if err := g.mux.HandlePath(http.MethodGet, overviewRoute, g.overview); err != nil {
		return nil, err
	}

	web, _ := fs.Sub(assets, "web")
	root := http.NewServeMux()
	root.Handle("/api/", g.authenticate(g.rateLimit(g.limitBody(g.shed(g.apiEdge(g.session(g.mux)))))))
	root.Handle("GET /.well-known/jwks.json", g.rateLimit(http.HandlerFunc(g.jwks)))
	root.HandleFunc("GET /api/openapi.json", g.serveOpenAPI)
	root.HandleFunc("GET /api/docs", g.serveAPIDocs)
	root.HandleFunc("GET /api/docs/redoc.standalone.js", g.serveRedoc)
	// For load balancers; /metrics, /healthz and /readyz are served on the
	// admin address only, never on the public port.
	root.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { plain(w, http.StatusOK, "OK") })
	root.Handle("GET /{$}", http.FileServerFS(web))
	root.Handle("GET /static/", noDirectoryListing(http.FileServerFS(web)))
	root.HandleFunc("/", g.notFound)
	g.handler = g.recoverPanics(g.withRequestID(g.measure(g.cors(root))))
	if cfg.Tracer != nil {
		g.handler = otelhttp.NewHandler(g.handler, "gateway",
			otelhttp.WithTracerProvider(cfg.Tracer), otelhttp.WithPropagators(mesh.Propagator))
	}
	return g, nil
}

// ServeHTTP implements http.Handler.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) { g.handler.ServeHTTP(w, r) }

func plain(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintln(w, body)
}

// Ready reports whether both upstreams answer SERVING on grpc.health.v1.
func (g *Gateway) Ready(ctx context.Context) error {
	var errs []error
	for name, h := range g.health {
		resp, err := h.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: unreachable", name))
		case resp.GetStatus() != healthpb.HealthCheckResponse_SERVING:
			errs = append(errs, fmt.Errorf("%s: %s", name, resp.GetStatus()))
		}
	}
	return errors.Join(errs...)
}

func (g *Gateway) serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(g.openapi)
}
