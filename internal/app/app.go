package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/trellis-mesh/trellis/internal/connlimit"
	"github.com/trellis-mesh/trellis/internal/redact"
	"github.com/trellis-mesh/trellis/internal/sqldb"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
	"github.com/trellis-mesh/trellis/mesh/identity"
	"github.com/trellis-mesh/trellis/mesh/token"
)

// App is a built set of components with their listeners open. Run serves
// them until its context ends, then shuts them down gracefully.
type App struct {
	cfg     Config
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *mesh.Metrics

	components []*component // in start order; stopped in reverse
	addrs      map[string]string
	closers    []func() error
	// workers run in the background (outbox relays, the event consumer,
	// the reconciler) from Run until shutdown.
	workers []func(ctx context.Context)

	tp               trace.TracerProvider
	buses            map[string]*eventbus.Bus
	ns               *server.Server
	evMetrics        *eventbus.Metrics
	eventMetricsOnce sync.Once

	// Security (nil with --insecure-plaintext).
	ids       *identity.Provider
	idMetrics *identity.Metrics
	sources   map[string]identity.Source
	policy    mesh.Policy

	// tokenKeys verify access tokens: the user service's own keys, or the
	// key set fetched from it.
	tokenKeys  token.KeySource
	tokenCache *token.Cache
	external   *token.External // --oidc-issuer's tokens, or nil

	redisClient *redis.Client // see redis
}

// component is one thing App serves.
type component struct {
	name     string
	serve    func() error
	shutdown func(ctx context.Context)
	// ready reports whether the component can take traffic now.
	ready func(ctx context.Context) error
}

// New builds the components cfg selects and opens their listeners, so the
// chosen addresses (port 0 picks one) are known before Run.
func New(ctx context.Context, cfg Config, log *slog.Logger) (_ *App, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	targets, _ := cfg.targets()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a := &App{cfg: cfg, log: log, reg: reg, metrics: mesh.NewMetrics(reg), addrs: map[string]string{}}
	// One record of the upstreams' overload refusals per process: the
	// mesh clients mark it, every limiter of the process reads it.
	a.cfg.Server.Shed.Upstream = new(mesh.UpstreamOverload)
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	// The admin server starts first and stops last, so probes see every
	// other component drain.
	if err := a.addAdmin(); err != nil {
		return nil, err
	}
	if a.tp, err = a.tracer(ctx); err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	if err := a.openSecurity(ctx); err != nil {
		return nil, err
	}
	for _, m := range targets {
		if err := m.add(a, ctx); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// upstream is where module name runs: where its upstream flag says, or
// else in this process.
func (a *App) upstream(name string) string {
	if configured := a.cfg.upstreamOf(name); configured != "" {
		return configured
	}
	return dialable(a.addrs[name])
}

// newServer is a mesh server for component with the process's server
// settings, its identity and the authorization policy.
func (a *App) newServer(component string, auth mesh.Authentication) (*mesh.Server, error) {
	cfg := a.cfg.Server
	cfg.Unreachable, cfg.Tracer, cfg.Auth, cfg.Name = sqldb.Unreachable, a.tp, auth, component
	cfg, err := a.secureServer(component, cfg)
	if err != nil {
		return nil, err
	}
	return mesh.NewServer(cfg, a.log.With("component", component), a.metrics), nil
}

// dialable turns a listen address into one to dial: a wildcard host
// ([::]:9001, 0.0.0.0:9001) becomes loopback.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

func (a *App) openDB(ctx context.Context, name string) (*sqldb.DB, error) {
	db, err := sqldb.Open(ctx, sqldb.Config{URL: a.cfg.DatabaseURL, DataDir: a.cfg.DataDir, Name: name})
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, db.Close)
	a.log.Info("database open", "component", name, "where", db.Where)
	return db, nil
}

func (a *App) dial(caller, name, target string, shared mesh.SharedBreakerState, services ...protoreflect.ServiceDescriptor) (*grpc.ClientConn, error) {
	creds, err := a.clientCredentials(caller, name)
	if err != nil {
		return nil, err
	}
	conn, err := mesh.Dial(mesh.ClientConfig{
		Name: name, Caller: caller, Target: target, Services: services, Shared: shared, Tracer: a.tp, Credentials: creds,
		DefaultTimeout: a.cfg.Upstream.Timeout, Breaker: a.cfg.Upstream.Breaker, Outlier: a.cfg.Upstream.Outlier,
		Overload: a.cfg.Server.Shed.Upstream,
	}, a.log.With("upstream", name), a.metrics)
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, conn.Close)
	return conn, nil
}

func (a *App) listen(name, addr string) (net.Listener, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen on %s: %w", name, addr, err)
	}
	a.addrs[name] = lis.Addr().String()
	return lis, nil
}

func (a *App) addGRPC(name, addr string, srv *mesh.Server, ping func(context.Context) error) error {
	lis, err := a.listen(name, addr)
	if err != nil {
		return err
	}
	a.components = append(a.components, &component{
		name:     name,
		serve:    func() error { return srv.Serve(lis) },
		shutdown: srv.Shutdown,
		ready: func(ctx context.Context) error {
			if !srv.Serving() {
				return errors.New("not serving")
			}
			if err := ping(ctx); err != nil {
				return errors.New("database unreachable")
			}
			return nil
		},
	})
	return nil
}

// addHTTP serves h on addr with the timeouts of the original design,
// through wrap (the gateway's connection limits) when it is set.
func (a *App) addHTTP(name, addr string, h http.Handler, ready func(context.Context) error, wrap func(net.Listener) net.Listener) error {
	lis, err := a.listen(name, addr)
	if err != nil {
		return err
	}
	if wrap != nil {
		lis = wrap(lis)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 15 * time.Second,
		MaxHeaderBytes:    MaxHeaderBytes,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.components = append(a.components, &component{
		name: name,
		serve: func() error {
			if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
		shutdown: func(ctx context.Context) {
			ctx, cancel := context.WithTimeout(ctx, a.cfg.Server.DrainTimeout)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				srv.Close()
			}
		},
		ready: ready,
	})
	return nil
}

// addAdmin serves /metrics, /healthz (alive) and /readyz (every component
// ready: servers serving, stores reachable), and with --pprof Go's
// profiler.
func (a *App) addAdmin() error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		status, body := http.StatusOK, ""
		for _, c := range a.components {
			if c.ready == nil {
				continue
			}
			if err := c.ready(ctx); err != nil {
				status = http.StatusServiceUnavailable
				body += c.name + ": " + err.Error() + "\n"
			} else {
				body += c.name + ": ok\n"
			}
		}
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	})
	if a.cfg.PProf {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		// Not pprof.Cmdline: the command line may hold a database URL
		// with its password.
		mux.HandleFunc("/debug/pprof/cmdline", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprint(w, strings.Join(redact.Args(os.Args), "\x00"))
		})
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return a.addHTTP("admin", a.cfg.AdminAddr, mux, nil, func(lis net.Listener) net.Listener {
		return connlimit.New(lis, connlimit.Limits{Max: AdminMaxConns}, connlimit.Options{})
	})
}

// AdminMaxConns bounds the connections the admin server holds open at
// once; over it a new one is closed at once. Its callers — a scraper, the
// orchestrator's probes, `trellis healthcheck` — open a few; without a
// bound, whoever reaches the port could hold thousands, each with a
// goroutine and buffers until the read-header timeout, and make as many
// /readyz calls ping the databases at once.
const AdminMaxConns = 64

// MaxHeaderBytes caps the request line and headers of an HTTP request to
// the gateway or the admin server (net/http's default is 1 MiB); larger
// ones are answered 431.
const MaxHeaderBytes = 64 << 10

// Addr returns the address a component listens on ("user", "order",
// "gateway", "admin"), or "".
func (a *App) Addr(name string) string { return a.addrs[name] }

// Registry is the process's metrics registry.
func (a *App) Registry() *prometheus.Registry { return a.reg }

// Run serves every component until ctx ends or one fails, then shuts all
// down in reverse start order (health NOT_SERVING, drain) and closes
// databases and connections.
func (a *App) Run(ctx context.Context) error {
	for _, c := range a.components {
		a.log.Info("listening", "component", c.name, "addr", a.addrs[c.name])
	}
	stopWorkers := a.runWorkers(ctx)
	errc := make(chan error, len(a.components))
	var wg sync.WaitGroup
	for _, c := range a.components {
		wg.Go(func() {
			if err := c.serve(); err != nil {
				errc <- fmt.Errorf("%s: %w", c.name, err)
			}
		})
	}
	var err error
	select {
	case <-ctx.Done():
		a.log.Info("shutting down")
	case err = <-errc:
		a.log.Error("component failed, shutting down", "error", err.Error())
	}
	stopCtx := context.WithoutCancel(ctx)
	for i := len(a.components) - 1; i >= 0; i-- {
		a.components[i].shutdown(stopCtx)
	}
	wg.Wait()
	// Servers are drained: no more changes. Stop the relays and the
	// consumer; what is left in the outboxes goes out at the next start.
	stopWorkers()
	a.close()
	a.log.Info("stopped")
	return err
}

func (a *App) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		_ = a.closers[i]()
	}
	a.closers = nil
}
