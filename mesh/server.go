package mesh

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/trellis-mesh/trellis/internal/connlimit"
)

// ServerConfig tunes a Server. The zero value is usable: zero fields take the
// defaults documented on each field.
type ServerConfig struct {
	// MaxDeadline caps the time any call may run; calls without a deadline
	// get this one. Default 30s.
	MaxDeadline time.Duration
	// DrainTimeout bounds graceful stop: after it, open calls are cut.
	// Default 10s.
	DrainTimeout time.Duration
	// KeepaliveMinTime is the shortest client keepalive ping interval
	// tolerated; faster pingers are disconnected. Default 10s.
	KeepaliveMinTime time.Duration
	// MaxConnectionIdle closes connections idle this long. Default 5m.
	MaxConnectionIdle time.Duration
	// Tracer, when set, traces every call (OpenTelemetry, W3C trace
	// context). Nil: no tracing and no cost.
	Tracer trace.TracerProvider
	// MaxRecvMsgBytes caps a request message. Default MaxRequestBytes
	// (256 KiB).
	MaxRecvMsgBytes int
	// MaxSendMsgBytes caps a response message. Default MaxResponseBytes
	// (4 MiB).
	MaxSendMsgBytes int
	// MaxConcurrentStreams caps the calls in flight on one connection;
	// further calls wait for a free stream. It bounds what one connection
	// can make the server hold: requests it sends slowly (each at most
	// MaxRecvMsgBytes) and answers it does not read (each at most a page,
	// 256 KiB): 64 × 512 KiB = 32 MiB. Default 64.
	MaxConcurrentStreams uint32
	// MaxHeaderListBytes caps the metadata (HTTP/2 header list) of one
	// call; larger ones are refused by the transport before any code runs.
	// Default 16 KiB (gRPC's own default is 16 MiB).
	MaxHeaderListBytes uint32
	// Credentials secure the listener (identity.ServerCredentials: mutual
	// TLS with SPIFFE IDs). Nil: plaintext, for tests and benchmarks.
	Credentials credentials.TransportCredentials
	// Policy decides which peers may call which methods (grpc/authz).
	// Nil: every caller may call every method.
	Policy Policy
	// Name names the server in metrics (user, order).
	Name string
	// Shed turns on load shedding (opt-in).
	Shed ShedConfig
	// Auth authenticates end users by their access tokens (see
	// Authentication). Zero: no end-user authentication.
	Auth Authentication
	// Conns bound the connections the server holds open, per client
	// address (an IPv6 client: its /64) and in all, counted before the
	// TLS handshake; one over a limit is closed at once. A handshake that
	// never finishes is held until its 10 s timeout, ~40 KiB with the
	// client's ClientHello: 8 000 of them from one address grew `trellis
	// run` by 315 MiB before this limit (internal/connlimit). Zero: no
	// limit; the flags' defaults are DefaultMaxConns and
	// DefaultMaxConnsPerClient.
	Conns connlimit.Limits
	// Unreachable recognises errors that mean a backing service (the
	// database) cannot be reached, beyond the network errors the mesh
	// knows itself; such errors are answered UNAVAILABLE. Optional.
	Unreachable func(error) bool
}

// Defaults of the server settings that are flags.
const (
	DefaultMaxDeadline  = 30 * time.Second
	DefaultDrainTimeout = 10 * time.Second
	// DefaultMaxConns bounds what connections can cost a server to
	// ~64 MiB at ~64 KiB each (a connection's transport buffers).
	DefaultMaxConns = 1024
	// DefaultMaxConnsPerClient is far above what a caller opens (a mesh
	// client keeps one connection per server address; grpcurl, one per
	// call).
	DefaultMaxConnsPerClient = 64
)

// RegisterFlags defines the server flags (max-deadline, drain-timeout,
// grpc-max-conns, grpc-max-conns-per-client and the shedding flags), each
// name prefixed. The durations' defaults are those withDefaults applies;
// the connection limits and shedding, off in a zero ServerConfig, are on
// by the flags' defaults.
func (c *ServerConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.DurationVar(&c.MaxDeadline, prefix+"max-deadline", DefaultMaxDeadline, "cap on the deadline of any incoming gRPC call")
	fs.DurationVar(&c.DrainTimeout, prefix+"drain-timeout", DefaultDrainTimeout, "how long graceful shutdown waits for in-flight calls")
	fs.IntVar(&c.Conns.Max, prefix+"grpc-max-conns", DefaultMaxConns, "connections each gRPC server holds open at once, counted before the TLS handshake; over it a new one is closed at once (0: no limit)")
	fs.IntVar(&c.Conns.PerClient, prefix+"grpc-max-conns-per-client", DefaultMaxConnsPerClient, "connections each gRPC server holds open at once from one client address (IPv6: its /64); over it a new one is closed at once (0: no limit)")
	c.Shed.RegisterFlags(prefix, fs)
}

// Validate reports settings that cannot work.
func (c *ServerConfig) Validate() error {
	if c.MaxDeadline <= 0 || c.DrainTimeout <= 0 {
		return errors.New("--max-deadline and --drain-timeout must be positive")
	}
	if c.Conns.Max < 0 || c.Conns.PerClient < 0 {
		return errors.New("--grpc-max-conns and --grpc-max-conns-per-client must not be negative (0: no limit)")
	}
	return c.Shed.Validate()
}

func (c ServerConfig) withDefaults() ServerConfig {
	if c.MaxDeadline <= 0 {
		c.MaxDeadline = DefaultMaxDeadline
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.KeepaliveMinTime <= 0 {
		c.KeepaliveMinTime = 10 * time.Second
	}
	if c.MaxConnectionIdle <= 0 {
		c.MaxConnectionIdle = 5 * time.Minute
	}
	if c.MaxRecvMsgBytes <= 0 {
		c.MaxRecvMsgBytes = MaxRequestBytes
	}
	if c.MaxSendMsgBytes <= 0 {
		c.MaxSendMsgBytes = MaxResponseBytes
	}
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = 64
	}
	if c.MaxHeaderListBytes == 0 {
		c.MaxHeaderListBytes = 16 << 10
	}
	return c
}

// Message limits of mesh servers and clients, each explicit (gRPC's own
// defaults are 4 MiB received and 2 GiB sent).
const (
	// MaxRequestBytes caps a request: the largest any Trellis RPC needs
	// (CreateOrder with 100 lines of 100-byte product ids) is ~15 KiB.
	MaxRequestBytes = 256 << 10
	// MaxResponseBytes caps a response; list pages stay under 256 KiB
	// (pagetoken.MaxPageBytes), so this is only a backstop.
	MaxResponseBytes = 4 << 20
)

// Server is a gRPC server with the mesh chain, health and reflection.
type Server struct {
	cfg        ServerConfig
	log        *slog.Logger
	grpc       *grpc.Server
	health     *health.Server
	validators map[string]Validator
	times      serviceTimes
	services   []string
	metrics    *Metrics

	mu      sync.Mutex
	serving bool
}

// NewServer builds a server. Register services before Serve.
//
// The unary chain, outermost first, and why in that order:
//  0. with Shed on, admission — a call over the adaptive concurrency
//     limit is refused (RESOURCE_EXHAUSTED, retry pushback) before
//     anything is spent on it;
//  1. request id — everything after it can log and forward the id;
//  2. logging — one line per call with the final code, even for panics;
//  3. metrics — count and time the call with the code the client sees;
//     then, when a Policy is set, authorization — refuse a caller before
//     any work is done for it, with its refusal logged and counted;
//     then, when Auth is set, authentication of the end user — an invalid
//     token or a missing one on a non-public method ends the call here;
//  4. error edge — non-status errors become INTERNAL "internal error" so
//     neither logs above nor clients see a raw Go error as the status;
//  5. recovery — a panic becomes INTERNAL, its stack goes only to the log;
//  6. deadline cap — bound the work before the handler starts; then refuse
//     a call whose deadline is too short for what the method usually takes;
//  7. validation — reject bad requests before any handler code runs.
func NewServer(cfg ServerConfig, log *slog.Logger, m *Metrics, opts ...grpc.ServerOption) *Server {
	cfg = cfg.withDefaults()
	log = slog.New(WithTraceIDs(log.Handler())) // every server log line names its trace
	s := &Server{cfg: cfg, log: log, health: health.NewServer(), validators: map[string]Validator{}, times: serviceTimes{}, metrics: m}
	unary := []grpc.UnaryServerInterceptor{serverRequestID, accessLog(log), m.server.UnaryServerInterceptor()}
	if cfg.Name != "" {
		exportShedMetrics(m, cfg.Name)
	}
	if cfg.Shed.Enabled {
		// First of all: a call refused for overload costs nothing more.
		unary = append([]grpc.UnaryServerInterceptor{admission(NewLimiter(cfg.Shed, cfg.Name, m), s.times)}, unary...)
	}
	var stream []grpc.StreamServerInterceptor
	if cfg.Policy != nil {
		unary = append(unary, authorize(cfg.Policy, log, m))
		stream = append(stream, authorizeStream(cfg.Policy, log, m))
	}
	if cfg.Auth.Tokens != nil {
		unary = append(unary, authenticate(cfg.Auth, s.times, log))
	}
	chain := grpc.ChainUnaryInterceptor(append(unary,
		errorEdge(log, cfg.Unreachable),
		recovery.UnaryServerInterceptor(recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
			log.ErrorContext(ctx, "panic in handler", "request_id", RequestID(ctx), "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			return InternalError(ctx)
		})),
		deadlines(cfg.MaxDeadline, s.times, m),
		validation(s.validators),
	)...)
	all := append(serverTracing(cfg.Tracer), chain, grpc.ChainStreamInterceptor(stream...),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: cfg.KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: cfg.MaxConnectionIdle, Time: keepaliveTime, Timeout: keepaliveTimeout}),
		// Explicit limits: what one connection may send and hold.
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgBytes),
		grpc.MaxSendMsgSize(cfg.MaxSendMsgBytes),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		grpc.MaxHeaderListSize(cfg.MaxHeaderListBytes),
		// A connection that has not finished its TLS and HTTP/2 handshakes
		// in 10 s is closed (gRPC's default waits 120 s), so half-open
		// handshakes cannot pile up.
		grpc.ConnectionTimeout(10*time.Second),
		grpc.ForceServerCodecV2(newServerCodec()),
		// Serve calls on a pool of goroutines instead of a new one per
		// call: their stacks stay grown, so a handler that goes deep (SQLite
		// in modernc.org/sqlite does) stops paying for stack copies on every
		// call (the README's performance section has the numbers). Calls
		// beyond the pool still get their own goroutine.
		grpc.NumStreamWorkers(uint32(16*runtime.GOMAXPROCS(0))))
	if cfg.Credentials != nil {
		all = append(all, grpc.Creds(cfg.Credentials))
	}
	all = append(all, opts...)
	s.grpc = grpc.NewServer(all...)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	return s
}

// Register adds a service and the validator for its requests (may be nil).
func (s *Server) Register(desc *grpc.ServiceDesc, impl any, v Validator) {
	s.grpc.RegisterService(desc, impl)
	if v != nil {
		s.validators[desc.ServiceName] = v
	}
	for _, md := range desc.Methods {
		name := "/" + desc.ServiceName + "/" + md.MethodName
		s.times[name] = &serviceTime{}
		for _, reason := range []string{"deadline", "overload"} {
			s.metrics.refused.WithLabelValues(name, reason) // exported at zero from the start
		}
	}
	s.services = append(s.services, desc.ServiceName)
	s.health.SetServingStatus(desc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
}

// Serve marks every service SERVING and serves lis until Shutdown.
func (s *Server) Serve(lis net.Listener) error {
	s.metrics.server.InitializeMetrics(s.grpc)
	s.setServing(true)
	lis = connlimit.New(userTimeoutListener{lis}, s.cfg.Conns, connlimit.Options{
		Open:    s.metrics.conns.WithLabelValues(s.cfg.Name),
		Refused: s.metrics.connsRefused.MustCurryWith(prometheus.Labels{"server": s.cfg.Name}),
	})
	err := s.grpc.Serve(lis)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// The server's keepalive: a ping after keepaliveTime without frames, the
// connection closed when it is not answered within keepaliveTimeout —
// which grpc-go also sets as the socket's TCP_USER_TIMEOUT, so that data
// sent to a peer that is gone is given up on as soon.
const (
	keepaliveTime    = 2 * time.Minute
	keepaliveTimeout = 20 * time.Second
)

// userTimeoutListener sets TCP_USER_TIMEOUT (keepaliveTimeout) on what it
// accepts. grpc-go sets it only on a *net.TCPConn, and the connection
// limits' wrapper hides that type from it: without this, a server with
// limits would keep a dead peer's connection — and its slot under the
// limits — until the next keepalive ping fails, not 20 s after its data
// went unacknowledged. (Without limits, grpc-go sets the same value
// again.)
type userTimeoutListener struct{ net.Listener }

func (l userTimeoutListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		setUserTimeout(c, keepaliveTimeout)
	}
	return c, err
}

// Serving reports whether the server is up and not draining.
func (s *Server) Serving() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.serving
}

func (s *Server) setServing(on bool) {
	s.mu.Lock()
	s.serving = on
	s.mu.Unlock()
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if on {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, name := range append([]string{""}, s.services...) {
		s.health.SetServingStatus(name, st)
	}
}

// Shutdown turns health NOT_SERVING (so balancers stop sending), lets
// in-flight calls finish, and cuts whatever is left after DrainTimeout or
// when ctx ends.
func (s *Server) Shutdown(ctx context.Context) {
	s.setServing(false)
	s.health.Shutdown()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	timer := time.NewTimer(s.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-done:
		return
	case <-timer.C:
	case <-ctx.Done():
	}
	s.log.Warn("drain timeout: cutting open calls", "drain_timeout", s.cfg.DrainTimeout.String())
	s.grpc.Stop()
	<-done
}

// GRPC exposes the underlying server, e.g. to register extra services.
func (s *Server) GRPC() *grpc.Server { return s.grpc }
