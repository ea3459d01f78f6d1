// Package app wires Trellis's components — the user service, the order
// service, the gateway and the admin server — into one process. Which of
// them run is chosen by the target list (user, order, gateway, all), in the
// manner of Loki's modules: one binary, any subset per process.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/trellis-mesh/trellis/gateway"
	"github.com/trellis-mesh/trellis/internal/quota"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
	"github.com/trellis-mesh/trellis/mesh/identity"
	"github.com/trellis-mesh/trellis/mesh/token"
	"github.com/trellis-mesh/trellis/services/order"
	"github.com/trellis-mesh/trellis/services/user"
)

// Target names.
const (
	TargetUser    = "user"
	TargetOrder   = "order"
	TargetGateway = "gateway"
	TargetAll     = "all"
)

// Config is everything `trellis run` can be told. Each component owns its
// settings — a Config with RegisterFlags and Validate in its own package,
// with its defaults there — and this one composes them with what belongs
// to the process (targets, addresses, backing services). Every field has a
// flag and an environment variable (see EnvName); flags win.
type Config struct {
	Target      string
	DataDir     string
	UserAddr    string
	OrderAddr   string
	AdminAddr   string
	HTTPAddr    string
	DatabaseURL string
	NATSURL     string
	NATSListen  string
	NATSSync    string // the embedded server's sync: "always" or an interval
	RedisURL    string
	// RedisTimeout bounds each Redis call (dial, read, write): past it a
	// rate limit lets the request through and a breaker keeps its own
	// state.
	RedisTimeout time.Duration
	LogLevel     string
	LogFormat    string
	// PProf serves Go's profiler on the admin address.
	PProf bool
	// UserUpstream and OrderUpstream are where a module finds a
	// dependency that does not run in this process.
	UserUpstream  string
	OrderUpstream string

	Server   mesh.ServerConfig   // every gRPC server: deadlines, drain
	Upstream mesh.UpstreamConfig // every upstream: timeout, breaker
	Identity identity.Config     // workload identities (mTLS, NATS)
	Token    token.Config        // access tokens: issuer, audience, leeway
	Events   eventbus.Config     // streams: prefix, replicas
	Outbox   eventbus.RelayConfig
	User     user.Config
	Order    order.Config
	Gateway  gateway.Config
	// AuthzPolicy is a grpc/authz policy file, reloaded every AuthzReload;
	// empty: the built-in policy (DefaultPolicy).
	AuthzPolicy string
	AuthzReload time.Duration

	// Tracer is set by tests (an in-memory exporter); otherwise tracing
	// follows the standard OTEL_EXPORTER_OTLP_* environment.
	Tracer trace.TracerProvider
}

// RegisterFlags defines the flags of `trellis run` on fs: the process's
// own, then each component's.
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
	fs.StringVar(&c.RedisURL, "redis-url", "", "Redis URL (redis://host:6379/0, rediss:// for TLS) for breaker state shared by the order service's replicas and rate-limit counters shared by the gateway's; empty: each replica keeps its own")
	fs.DurationVar(&c.RedisTimeout, "redis-timeout", quota.DefaultStoreTimeout, "how long one call to --redis-url may take (dial, read, write; 10ms to 10s): past it a rate-limit check lets the request through and a breaker keeps its own state")
	fs.StringVar(&c.NATSListen, "nats-listen", "", "TCP address for the embedded NATS server (e.g. 127.0.0.1:4222); empty: in-process only")
	fs.StringVar(&c.NATSSync, "nats-sync", "always", "when the embedded NATS server syncs its store to disk: always (before acknowledging a write: nothing acknowledged is lost on power loss) or an interval such as 2m (JetStream's default: faster, may lose the last interval's acknowledged events); docs/consistency.md")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "json", "log format: json or text")
	fs.BoolVar(&c.PProf, "pprof", false, "serve Go's profiler at /debug/pprof/ on the admin address (off by default: profiles show internals)")
	fs.StringVar(&c.AuthzPolicy, "authz-policy", "", "grpc/authz policy file (JSON, gRFC A43) deciding which SPIFFE IDs may call which methods, reloaded when it changes; empty: the built-in policy (docs/security.md)")
	fs.DurationVar(&c.AuthzReload, "authz-reload", 10*time.Second, "how often --authz-policy is reread")
	c.Server.RegisterFlags("", fs)
	c.Upstream.RegisterFlags("", fs)
	c.Identity.RegisterFlags("", fs)
	c.Token.RegisterFlags("", fs)
	c.Events.RegisterFlags("", fs)
	c.Outbox.RegisterFlags("", fs)
	c.User.RegisterFlags("", fs)
	c.Order.RegisterFlags("", fs)
	c.Gateway.RegisterFlags("", fs)
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

// module is a component a process can run: what it needs from other
// modules (their gRPC address: in this process when they run here, else
// from an upstream flag) and how it is built.
type module struct {
	name  string
	needs []string
	add   func(a *App, ctx context.Context) error
}

// modules lists every target in dependency order. Adding a component is
// one entry here.
var modules = []module{
	{name: TargetUser, add: (*App).addUser},
	{name: TargetOrder, needs: []string{TargetUser}, add: (*App).addOrder},
	{name: TargetGateway, needs: []string{TargetUser, TargetOrder}, add: (*App).addGateway},
}

// upstreamFlag is the flag that names where a module runs when it is not
// in this process.
var upstreamFlag = map[string]string{TargetUser: "user-upstream", TargetOrder: "order-upstream"}

// upstreamOf is the configured address of a module in another process.
func (c *Config) upstreamOf(name string) string {
	switch name {
	case TargetUser:
		return c.UserUpstream
	case TargetOrder:
		return c.OrderUpstream
	}
	return ""
}

// targets returns the modules to run, in dependency order.
func (c *Config) targets() ([]module, error) {
	want := map[string]bool{}
	for _, t := range strings.Split(c.Target, ",") {
		switch t = strings.TrimSpace(t); t {
		case TargetAll:
			for _, m := range modules {
				want[m.name] = true
			}
		case TargetUser, TargetOrder, TargetGateway:
			want[t] = true
		default:
			return nil, fmt.Errorf("unknown target %q: want user, order, gateway or all", t)
		}
	}
	var out []module
	for _, m := range modules {
		if want[m.name] {
			out = append(out, m)
		}
	}
	return out, nil
}

// runs reports whether the module name is among ms.
func runs(ms []module, name string) bool {
	return slices.ContainsFunc(ms, func(m module) bool { return m.name == name })
}

// Validate reports configuration that cannot work: each component's own
// checks, then the process's.
func (c *Config) Validate() error {
	t, err := c.targets()
	if err != nil {
		return err
	}
	errs := []error{c.Server.Validate(), c.Upstream.Validate(), c.Identity.Validate(), c.Events.Validate(),
		c.Outbox.Validate(), c.User.Validate(), c.Order.Validate(), c.Gateway.Validate(), c.Token.Validate()}
	for _, m := range t {
		for _, dep := range m.needs {
			if !runs(t, dep) && c.upstreamOf(dep) == "" {
				errs = append(errs, fmt.Errorf("target %s without %s needs --%s", m.name, dep, upstreamFlag[dep]))
			}
		}
	}
	if runs(t, TargetUser) != runs(t, TargetOrder) && c.NATSURL == "" && c.NATSListen == "" {
		// One of them alone with an in-process NATS nobody else can reach
		// would publish events the other never sees.
		errs = append(errs, errors.New("user and order in separate processes need a shared NATS: set --nats-url, or --nats-listen on one of them and --nats-url on the other"))
	}
	if _, _, err := c.natsSync(); err != nil {
		errs = append(errs, err)
	}
	if c.NATSURL != "" && c.NATSListen != "" {
		errs = append(errs, errors.New("--nats-listen is for the embedded server; it cannot be used with --nats-url"))
	}
	if !c.Identity.Insecure && c.Identity.PerProcess() && len(t) > 1 {
		errs = append(errs, fmt.Errorf("--identity-source %s gives a process one identity: run one target per process", c.Identity.Source))
	}
	if c.RedisTimeout < 10*time.Millisecond || c.RedisTimeout > 10*time.Second {
		errs = append(errs, fmt.Errorf("--redis-timeout %s: want 10ms to 10s", c.RedisTimeout))
	}
	if !slices.Contains([]string{"json", "text"}, c.LogFormat) {
		errs = append(errs, fmt.Errorf("--log-format %q: want json or text", c.LogFormat))
	}
	if c.AuthzReload <= 0 {
		errs = append(errs, errors.New("--authz-reload must be positive"))
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

// natsSync is --nats-sync as the embedded server's options: sync before
// every acknowledgement, or every interval.
func (c *Config) natsSync() (always bool, interval time.Duration, err error) {
	if c.NATSSync == "" || c.NATSSync == "always" {
		return true, 0, nil
	}
	d, err := time.ParseDuration(c.NATSSync)
	if err != nil || d <= 0 {
		return false, 0, errors.New(`--nats-sync must be "always" or a positive interval such as 2m`)
	}
	return false, d, nil
}
