package mesh

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// DefaultUpstreamTimeout bounds each upstream call unless configured.
const DefaultUpstreamTimeout = 5 * time.Second

// UpstreamConfig is what a process sets once for all its upstreams: the
// per-call deadline and the breaker's tuning. ClientConfig takes both.
type UpstreamConfig struct {
	Timeout time.Duration
	Breaker BreakerConfig
	Outlier OutlierConfig
}

// RegisterFlags defines upstream-timeout and the breaker flags
// (breaker-failures, -max-requests, -interval, -timeout), each prefixed.
func (c *UpstreamConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.DurationVar(&c.Timeout, prefix+"upstream-timeout", DefaultUpstreamTimeout, "deadline of each upstream call (a caller's shorter deadline wins)")
	c.Breaker.RegisterFlags(prefix+"breaker-", fs)
	c.Outlier.RegisterFlags(prefix, fs)
}

// Validate reports settings that cannot work.
func (c *UpstreamConfig) Validate() error {
	if c.Timeout <= 0 || c.Breaker.Timeout <= 0 || c.Breaker.Interval <= 0 {
		return errors.New("--upstream-timeout, --breaker-timeout and --breaker-interval must be positive")
	}
	return c.Outlier.Validate()
}

// ClientConfig describes one upstream.
type ClientConfig struct {
	// Name labels the upstream in metrics, logs and errors ("user").
	Name string
	// Caller names the component making the calls ("order", "gateway"), so
	// two callers of one upstream in a process keep separate breaker
	// metrics. Empty means "default".
	Caller string
	// Target is a gRPC target. A bare host:port is resolved through DNS
	// (dns:///host:port) and balanced round-robin over every address, so
	// one name can front several replicas. A comma list of host:port
	// (replicas without a DNS name, e.g. on one machine) is balanced
	// round-robin as given.
	Target string
	// Services whose idempotent reads (idempotency_level NO_SIDE_EFFECTS in
	// the proto) are retried on UNAVAILABLE.
	Services []protoreflect.ServiceDescriptor
	// DefaultTimeout bounds each call: calls without a deadline get this
	// one, and a propagated deadline further away is shortened to it.
	// Default 5s.
	DefaultTimeout time.Duration
	// Breaker tunes the upstream's circuit breaker.
	Breaker BreakerConfig
	// Outlier ejects a replica that fails while the others answer, before
	// the upstream's breaker sees a run of faults. Zero: off.
	Outlier OutlierConfig
	// Credentials secure the connection; nil means plaintext (loopback).
	Credentials credentials.TransportCredentials
	// Shared, when set, shares the breaker's open state with the caller's
	// other replicas (e.g. redisbreaker.State): they open and close
	// together.
	Shared SharedBreakerState
	// SharedRefresh is how often the shared state is read. Default 250ms.
	SharedRefresh time.Duration
	// Tracer, when set, traces every call and propagates the trace
	// context. Nil: no tracing.
	Tracer trace.TracerProvider
	// Overload, when set, is marked whenever the upstream refuses a call
	// for overload (see UpstreamOverload); the process's limiters read it.
	Overload *UpstreamOverload
}

// Dial returns a lazily connecting client for the upstream. Interceptors,
// outermost first: request id, metrics (every attempt the caller made, with
// the code it got, breaker rejections included), default deadline, breaker
// (which also tells the upstream's answers from errors made on this side,
// and gives the latter client-safe text).
// gRPC's own retry (service config) runs inside the breaker, so a call that
// succeeded on retry counts as one success.
func Dial(cfg ClientConfig, log *slog.Logger, m *Metrics, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if cfg.Name == "" || cfg.Target == "" {
		return nil, fmt.Errorf("mesh: upstream needs a name and a target")
	}
	if cfg.DefaultTimeout <= 0 {
		cfg.DefaultTimeout = DefaultUpstreamTimeout
	}
	creds := cfg.Credentials
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	sc, err := ServiceConfig(cfg.Outlier, cfg.Services...)
	if err != nil {
		return nil, err
	}
	if cfg.Caller == "" {
		cfg.Caller = "default"
	}
	// When the breaker half-opens, reconnect now instead of after the
	// connection backoff, so the trial calls find the upstream if it is
	// back.
	var conn atomic.Pointer[grpc.ClientConn]
	var shared *sharedOpen
	if cfg.Shared != nil {
		if cfg.SharedRefresh <= 0 {
			cfg.SharedRefresh = 250 * time.Millisecond
		}
		shared = newSharedOpen(cfg.Shared, cfg.Caller+":"+cfg.Name, cfg.SharedRefresh, log)
	}
	cb := newBreaker(cfg.Caller, cfg.Name, cfg.Breaker, log, m, func() {
		if c := conn.Load(); c != nil {
			c.ResetConnectBackoff()
		}
	}, shared)
	all := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(sc),
		// The service config is ours (retries, outlier ejection), never
		// the resolver's: no DNS TXT lookup (_grpc_config.<name>), which
		// where no DNS server answers holds up every resolution — the first
		// connection and every re-resolution after a replica fails — for
		// the resolver's timeout (10 s), and which would let whoever
		// controls DNS rewrite the retry policy.
		grpc.WithDisableServiceConfig(),
		// Reconnect quickly after an upstream restart (gRPC's default
		// backoff grows to 2 minutes); the breaker already sheds load.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		// Requests over what mesh servers accept fail here, as the
		// caller's mistake, instead of being sent to be refused.
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(MaxRequestBytes), grpc.MaxCallRecvMsgSize(MaxResponseBytes)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithChainUnaryInterceptor(
			clientRequestID,
			m.client.UnaryClientInterceptor(),
			defaultDeadline(cfg.DefaultTimeout),
			breakerInterceptor(cfg.Caller, cfg.Name, cb, m, shared, cfg.Overload),
		),
	}, opts...)
	all = append(all, clientTracing(cfg.Tracer)...)
	target := dnsTarget(cfg.Target)
	if addrs := strings.Split(cfg.Target, ","); len(addrs) > 1 {
		r := manual.NewBuilderWithScheme("trellis-static")
		state := resolver.State{}
		for _, a := range addrs {
			state.Addresses = append(state.Addresses, resolver.Address{Addr: strings.TrimSpace(a)})
		}
		r.InitialState(state)
		target = "trellis-static:///" + cfg.Name
		all = append(all, grpc.WithResolvers(r))
	}
	c, err := grpc.NewClient(target, all...)
	if err != nil {
		return nil, err
	}
	conn.Store(c)
	return c, nil
}

// dnsTarget turns host:port into dns:///host:port; targets with a scheme
// (dns:, unix:, passthrough:) are kept.
func dnsTarget(t string) string {
	if strings.Contains(t, ":///") || strings.HasPrefix(t, "unix:") || strings.HasPrefix(t, "passthrough:") {
		return t
	}
	if strings.HasPrefix(t, ":") { // ":9001" means this host
		t = "localhost" + t
	}
	return "dns:///" + t
}

type methodName struct {
	Service string `json:"service"`
	Method  string `json:"method,omitempty"`
}

type retryPolicy struct {
	MaxAttempts          int      `json:"maxAttempts"`
	InitialBackoff       string   `json:"initialBackoff"`
	MaxBackoff           string   `json:"maxBackoff"`
	BackoffMultiplier    float64  `json:"backoffMultiplier"`
	RetryableStatusCodes []string `json:"retryableStatusCodes"`
}

type methodConfig struct {
	Name        []methodName `json:"name"`
	RetryPolicy *retryPolicy `json:"retryPolicy,omitempty"`
}

type serviceConfig struct {
	LoadBalancingConfig []map[string]any   `json:"loadBalancingConfig"`
	MethodConfig        []methodConfig     `json:"methodConfig,omitempty"`
	RetryThrottling     map[string]float64 `json:"retryThrottling,omitempty"`
}

// ServiceConfig builds the gRPC service config of an upstream: round_robin
// balancing (under outlier ejection when outlier is on), and a retry
// policy on UNAVAILABLE for every method the proto
// marks idempotency_level = NO_SIDE_EFFECTS (gRPC adds jitter to the
// backoff). Writes are never retried by the mesh: clients retry them with
// their own idempotency keys. retryThrottling stops retries when more than
// half the recent calls failed, so retries cannot amplify an outage.
func ServiceConfig(outlier OutlierConfig, services ...protoreflect.ServiceDescriptor) (string, error) {
	sc := serviceConfig{LoadBalancingConfig: outlier.loadBalancing()}
	var reads []methodName
	for _, sd := range services {
		methods := sd.Methods()
		for i := range methods.Len() {
			md := methods.Get(i)
			opts, _ := md.Options().(*descriptorpb.MethodOptions)
			if opts.GetIdempotencyLevel() == descriptorpb.MethodOptions_NO_SIDE_EFFECTS {
				reads = append(reads, methodName{Service: string(sd.FullName()), Method: string(md.Name())})
			}
		}
	}
	if len(reads) > 0 {
		sc.MethodConfig = []methodConfig{{Name: reads, RetryPolicy: &retryPolicy{
			MaxAttempts:       3,
			InitialBackoff:    "0.05s",
			MaxBackoff:        "0.5s",
			BackoffMultiplier: 2,
			// RESOURCE_EXHAUSTED: a shedding server, whose
			// grpc-retry-pushback-ms says when (gRFC A6).
			RetryableStatusCodes: []string{"UNAVAILABLE", "RESOURCE_EXHAUSTED"},
		}}}
		sc.RetryThrottling = map[string]float64{"maxTokens": 10, "tokenRatio": 0.1}
	}
	b, err := json.Marshal(sc)
	return string(b), err
}
