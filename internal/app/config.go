// Package app wires Trellis's components — the user service, the order
// service, the gateway and the admin server — into one process. Which of
// them run is chosen by the target list (user, order, gateway, all), in the
// manner of Loki's modules: one binary, any subset per process.
package app

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/identity"
)

// Target names.
const (
	TargetUser    = "user"
	TargetOrder   = "order"
	TargetGateway = "gateway"
	TargetAll     = "all"
)

// Config is everything `trellis run` can be told. Each field has a flag and
// an environment variable (see EnvName); flags win over the environment.
type Config struct {
	Target          string
	DataDir         string
	UserAddr        string
	OrderAddr       string
	AdminAddr       string
	HTTPAddr        string
	UserUpstream    string
	OrderUpstream   string
	DatabaseURL     string
	NATSURL         string
	LogLevel        string
	LogFormat       string
	UpstreamTimeout time.Duration
	MaxDeadline     time.Duration
	DrainTimeout    time.Duration
	Breaker         mesh.BreakerConfig
	BcryptCost      int
	CORS            string
	// PProf serves Go's profiler on the admin address.
	PProf bool

	RedisURL string
	// Tracer is set by tests (an in-memory exporter); otherwise tracing
	// follows the standard OTEL_EXPORTER_OTLP_* environment.
	Tracer            trace.TracerProvider
	NATSListen        string
	NATSReplicas      int
	NATSPrefix        string
	OutboxRetention   time.Duration
	ReconcileInterval time.Duration

	// Identity is where workload identities come from (mTLS, NATS).
	Identity identity.Config
	// AuthzPolicy is a grpc/authz policy file, reloaded every AuthzReload;
	// empty: the built-in policy (DefaultPolicy).
	AuthzPolicy string
	AuthzReload time.Duration
}

// RegisterFlags defines the flags of `trellis run` on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Target, "target", TargetAll, "components to run: user, order, gateway or all; a comma list is allowed")
	fs.StringVar(&c.DataDir, "data-dir", "./data", "directory for SQLite databases (used when --database-url is empty)")
	fs.StringVar(&c.UserAddr, "user-addr", ":9001", "gRPC listen address of the user service (port 0 picks a free port)")
	fs.StringVar(&c.OrderAddr, "order-addr", ":9002", "gRPC listen address of the order service")
	fs.StringVar(&c.AdminAddr, "admin-addr", ":9090", "admin HTTP listen address: /metrics, /healthz, /readyz")
	fs.StringVar(&c.HTTPAddr, "http-addr", ":8080", "HTTP listen address of the REST gateway")
	fs.StringVar(&c.UserUpstream, "user-upstream", "", "where the order service and gateway find the user service: host:port, dns:///name:port, or a comma list of host:port replicas; default: the user service in this process")
	fs.StringVar(&c.OrderUpstream, "order-upstream", "", "where the gateway finds the order service (same forms as --user-upstream); default: the order service in this process")
	fs.StringVar(&c.DatabaseURL, "database-url", "", "PostgreSQL URL (postgres://user@host:5432/db); empty means SQLite in --data-dir")
	fs.StringVar(&c.NATSURL, "nats-url", "", "NATS server with JetStream for domain events (nats://127.0.0.1:4222); empty: an embedded server, stored in --data-dir/nats")
	fs.StringVar(&c.RedisURL, "redis-url", "", "Redis URL (redis://host:6379/0) for breaker state shared by the order service's replicas; empty: each replica's breaker is its own")
	fs.StringVar(&c.NATSListen, "nats-listen", "", "TCP address for the embedded NATS server (e.g. 127.0.0.1:4222); empty: in-process only")
	fs.IntVar(&c.NATSReplicas, "nats-replicas", 1, "replicas of each JetStream stream (3 on a clustered JetStream)")
	fs.StringVar(&c.NATSPrefix, "nats-prefix", "", "prefix for every NATS subject and stream name, to share one NATS between installations")
	fs.DurationVar(&c.OutboxRetention, "outbox-retention", 24*time.Hour, "how long sent outbox rows are kept before pruning")
	fs.DurationVar(&c.ReconcileInterval, "reconcile-interval", 5*time.Second, "how often PENDING orders are checked with the user service")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "json", "log format: json or text")
	fs.DurationVar(&c.UpstreamTimeout, "upstream-timeout", 5*time.Second, "deadline of each upstream call (a caller's shorter deadline wins)")
	fs.DurationVar(&c.MaxDeadline, "max-deadline", 30*time.Second, "cap on the deadline of any incoming gRPC call")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 10*time.Second, "how long graceful shutdown waits for in-flight calls")
	c.Breaker.RegisterFlags("breaker-", fs)
	fs.IntVar(&c.BcryptCost, "bcrypt-cost", 10, "bcrypt cost of password hashes (4-31)")
	fs.BoolVar(&c.PProf, "pprof", false, "serve Go's profiler at /debug/pprof/ on the admin address (off by default: profiles show internals)")
	c.Identity.RegisterFlags("", fs)
	fs.StringVar(&c.AuthzPolicy, "authz-policy", "", "grpc/authz policy file (JSON, gRFC A43) deciding which SPIFFE IDs may call which methods, reloaded when it changes; empty: the built-in policy (docs/security.md)")
	fs.DurationVar(&c.AuthzReload, "authz-reload", 10*time.Second, "how often --authz-policy is reread")
	fs.StringVar(&c.CORS, "cors-origins", "", "comma list of browser origins (https://app.example.com) allowed to call the gateway; empty: same-origin only")
}

// EnvName is the environment variable that sets a flag: TRELLIS_<FLAG>,
// except the conventional DATABASE_URL, NATS_URL, REDIS_URL and
// SPIFFE_ENDPOINT_SOCKET.
func EnvName(flagName string) string {
	switch flagName {
	case "database-url":
		return "DATABASE_URL"
	case "nats-url":
		return "NATS_URL"
	case "redis-url":
		return "REDIS_URL"
	case "spiffe-socket":
		return "SPIFFE_ENDPOINT_SOCKET" // the SPIFFE standard's name
	}
	return "TRELLIS_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// ParseFlags parses args into fs, then fills every flag not given on the
// command line from its environment variable.
func ParseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		if v := getenv(EnvName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", EnvName(f.Name), v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// CORSOrigins returns the allowed origins of --cors-origins.
func (c *Config) CORSOrigins() []string {
	var out []string
	for _, o := range strings.Split(c.CORS, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, strings.TrimSuffix(o, "/"))
		}
	}
	return out
}

// Targets returns the set of components to run.
func (c *Config) Targets() (map[string]bool, error) {
	out := map[string]bool{}
	for _, t := range strings.Split(c.Target, ",") {
		switch t = strings.TrimSpace(t); t {
		case TargetAll:
			out[TargetUser], out[TargetOrder], out[TargetGateway] = true, true, true
		case TargetUser, TargetOrder, TargetGateway:
			out[t] = true
		default:
			return nil, fmt.Errorf("unknown target %q: want user, order, gateway or all", t)
		}
	}
	return out, nil
}

// Validate reports configuration that cannot work.
func (c *Config) Validate() error {
	t, err := c.Targets()
	if err != nil {
		return err
	}
	var errs []error
	if (t[TargetUser] != t[TargetOrder]) && c.NATSURL == "" && c.NATSListen == "" {
		// One of them alone with an in-process NATS nobody else can reach
		// would publish events the other never sees.
		errs = append(errs, errors.New("user and order in separate processes need a shared NATS: set --nats-url, or --nats-listen on one of them and --nats-url on the other"))
	}
	if c.NATSURL != "" && c.NATSListen != "" {
		errs = append(errs, errors.New("--nats-listen is for the embedded server; it cannot be used with --nats-url"))
	}
	if t[TargetOrder] && !t[TargetUser] && c.UserUpstream == "" {
		errs = append(errs, errors.New("target order without user needs --user-upstream"))
	}
	if t[TargetGateway] && !t[TargetUser] && c.UserUpstream == "" {
		errs = append(errs, errors.New("target gateway without user needs --user-upstream"))
	}
	if t[TargetGateway] && !t[TargetOrder] && c.OrderUpstream == "" {
		errs = append(errs, errors.New("target gateway without order needs --order-upstream"))
	}
	if err := c.Identity.Validate(); err != nil {
		errs = append(errs, err)
	}
	if !c.Identity.Insecure && c.Identity.PerProcess() && len(t) > 1 {
		errs = append(errs, fmt.Errorf("--identity-source %s gives a process one identity: run one target per process", c.Identity.Source))
	}
	if c.BcryptCost < 4 || c.BcryptCost > 31 {
		errs = append(errs, errors.New("--bcrypt-cost must be between 4 and 31"))
	}
	if !slices.Contains([]string{"json", "text"}, c.LogFormat) {
		errs = append(errs, fmt.Errorf("--log-format %q: want json or text", c.LogFormat))
	}
	if c.NATSReplicas < 1 || c.NATSReplicas > 5 {
		errs = append(errs, errors.New("--nats-replicas must be between 1 and 5"))
	}
	for name, d := range map[string]time.Duration{"outbox-retention": c.OutboxRetention, "reconcile-interval": c.ReconcileInterval, "upstream-timeout": c.UpstreamTimeout, "authz-reload": c.AuthzReload, "max-deadline": c.MaxDeadline, "drain-timeout": c.DrainTimeout, "breaker-timeout": c.Breaker.Timeout, "breaker-interval": c.Breaker.Interval} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("--%s must be positive", name))
		}
	}
	return errors.Join(errs...)
}

// Defaults is the configuration `trellis run` has with no flag and no
// environment variable: the flags' defaults, which RegisterFlags (and the
// components' own RegisterFlags it calls) is the one place to write.
func Defaults() Config {
	var c Config
	fs := flag.NewFlagSet("defaults", flag.ContinueOnError)
	c.RegisterFlags(fs)
	_ = fs.Parse(nil)
	return c
}
