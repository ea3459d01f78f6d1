package app_test

import (
	"flag"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/gateway"
	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/mesh"
)

// TestValidate: each component validates its own settings and the process
// checks what the modules need from each other; the defaults are valid.
func TestValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		edit func(*app.Config)
		want string // "" means valid
	}{
		{"defaults", func(*app.Config) {}, ""},
		{"order alone needs the user service's address", func(c *app.Config) { c.Target, c.NATSURL = "order", "nats://x" }, "target order without user needs --user-upstream"},
		{"gateway alone needs both", func(c *app.Config) { c.Target = "gateway" }, "target gateway without order needs --order-upstream"},
		{"gateway with its upstreams", func(c *app.Config) { c.Target, c.UserUpstream, c.OrderUpstream = "gateway", "u:1", "o:2" }, ""},
		{"separate user and order share a NATS", func(c *app.Config) { c.Target, c.UserUpstream = "order", "u:1" }, "need a shared NATS"},
		{"unknown target", func(c *app.Config) { c.Target = "user,nope" }, `unknown target "nope"`},
		{"bcrypt cost (user)", func(c *app.Config) { c.User.BcryptCost = 3 }, "--bcrypt-cost"},
		{"reconcile interval (order)", func(c *app.Config) { c.Order.ReconcileInterval = 0 }, "--reconcile-interval"},
		{"replicas (events)", func(c *app.Config) { c.Events.Replicas = 6 }, "--nats-replicas"},
		{"ping interval (events) zero", func(c *app.Config) { c.Events.PingInterval = 0 }, "--nats-ping-interval"},
		{"ping interval (events) too short", func(c *app.Config) { c.Events.PingInterval = time.Millisecond }, "--nats-ping-interval"},
		{"ping interval (events) at its bounds", func(c *app.Config) { c.Events.PingInterval = 100 * time.Millisecond }, ""},
		{"ping interval (events) too long", func(c *app.Config) { c.Events.PingInterval = 11 * time.Minute }, "--nats-ping-interval"},
		{"retention (outbox)", func(c *app.Config) { c.Outbox.Retention = -1 }, "--outbox-retention"},
		{"deadline (server)", func(c *app.Config) { c.Server.MaxDeadline = 0 }, "--max-deadline"},
		{"shedding limits (server)", func(c *app.Config) { c.Server.Shed.MinLimit = 0 }, "--shed-min-limit"},
		{"shedding CPU signal (server)", func(c *app.Config) { c.Server.Shed.RunQueue = -1 }, "--shed-run-queue"},
		{"shedding CPU signal NaN", func(c *app.Config) { c.Server.Shed.RunQueue = math.NaN() }, "--shed-run-queue"},
		{"shedding CPU signal infinite", func(c *app.Config) { c.Server.Shed.RunQueue = math.Inf(1) }, "--shed-run-queue"},
		{"shedding CPU share over 1", func(c *app.Config) { c.Server.Shed.CPUShare = 1.5 }, "--shed-cpu-share"},
		{"shedding CPU share NaN", func(c *app.Config) { c.Server.Shed.CPUShare = math.NaN() }, "--shed-cpu-share"},
		{"shedding CPU share negative", func(c *app.Config) { c.Server.Shed.CPUShare = -0.01 }, "--shed-cpu-share"},
		{"shedding CPU share infinite", func(c *app.Config) { c.Server.Shed.CPUShare = math.Inf(1) }, "--shed-cpu-share"},
		{"shedding CPU share 0 (the run queue alone)", func(c *app.Config) { c.Server.Shed.CPUShare = 0 }, ""},
		{"shedding CPU share 1", func(c *app.Config) { c.Server.Shed.CPUShare = 1 }, ""},
		{"shedding CPU signal off", func(c *app.Config) { c.Server.Shed.RunQueue = 0 }, ""},
		{"connections negative", func(c *app.Config) { c.Gateway.Conns.Max = -1 }, "--http-max-conns"},
		{"connections per client negative", func(c *app.Config) { c.Gateway.Conns.PerClient = -1 }, "--http-max-conns-per-client"},
		{"connections unlimited", func(c *app.Config) { c.Gateway.Conns = gateway.ConnLimits{} }, ""},
		{"gRPC connections negative", func(c *app.Config) { c.Server.Conns.Max = -1 }, "--grpc-max-conns"},
		{"gRPC connections per client negative", func(c *app.Config) { c.Server.Conns.PerClient = -5 }, "--grpc-max-conns-per-client"},
		{"shedding latency target", func(c *app.Config) { c.Server.Shed.LatencyTarget = -time.Millisecond }, "--shed-latency-target"},
		{"shedding limits crossed", func(c *app.Config) { c.Server.Shed.MinLimit, c.Server.Shed.MaxLimit = 64, 32 }, "--shed-min-limit"},
		{"breaker (upstream)", func(c *app.Config) { c.Upstream.Breaker.Timeout = 0 }, "--breaker-timeout"},
		{"outlier ejection (upstream)", func(c *app.Config) { c.Upstream.Outlier.FailurePercent = 101 }, "--outlier-failure-percent"},
		{"embedded NATS sync", func(c *app.Config) { c.NATSSync = "sometimes" }, "--nats-sync"},
		{"embedded NATS sync interval", func(c *app.Config) { c.NATSSync = "-1s" }, "--nats-sync"},
		{"Redis timeout zero", func(c *app.Config) { c.RedisTimeout = 0 }, "--redis-timeout"},
		{"Redis timeout long", func(c *app.Config) { c.RedisTimeout = time.Minute }, "--redis-timeout"},
		{"Redis timeout under its floor", func(c *app.Config) { c.RedisTimeout = 9 * time.Millisecond }, "--redis-timeout"},
		{"Redis timeout negative", func(c *app.Config) { c.RedisTimeout = -time.Second }, "--redis-timeout"},
		{"Redis timeout over its ceiling", func(c *app.Config) { c.RedisTimeout = 10*time.Second + 1 }, "--redis-timeout"},
		{"Redis timeout at its floor", func(c *app.Config) { c.RedisTimeout = 10 * time.Millisecond }, ""},
		{"Redis timeout at its ceiling", func(c *app.Config) { c.RedisTimeout = 10 * time.Second }, ""},
		{"origin (gateway)", func(c *app.Config) { c.Gateway.CORSOrigins = []string{"https://app.example.com/path"} }, "--cors-origins"},
		{"identity source (identity)", func(c *app.Config) { c.Identity.Source = "magic" }, "--identity-source"},
		{"one identity per process", func(c *app.Config) {
			c.Identity.Source, c.Identity.Cert, c.Identity.Key, c.Identity.Bundle = "files", "c", "k", "b"
		}, "run one target per process"},
		{"insecure skips identity checks", func(c *app.Config) { c.Identity.Insecure, c.Identity.Source = true, "magic" }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := app.Defaults()
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v, want valid", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestPingIntervalFlagRefusesMalformedValues: --nats-ping-interval and
// its environment variable accept only Go durations; anything else is an
// error naming the flag (the bounds are TestValidate's), and the default
// is 2 s.
func TestPingIntervalFlagRefusesMalformedValues(t *testing.T) {
	t.Parallel()
	if c := app.Defaults(); c.Events.PingInterval != 2*time.Second {
		t.Fatalf("default ping interval %v, want 2s", c.Events.PingInterval)
	}
	refusesMalformedDurations(t, "nats-ping-interval", "TRELLIS_NATS_PING_INTERVAL")
}

// TestLatencyTargetFlagRefusesMalformedValues: the same for
// --shed-latency-target; 0s (off) is accepted, a negative one is
// TestValidate's.
func TestLatencyTargetFlagRefusesMalformedValues(t *testing.T) {
	t.Parallel()
	refusesMalformedDurations(t, "shed-latency-target", "TRELLIS_SHED_LATENCY_TARGET")
	var c app.Config
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	if err := app.ParseFlags(fs, []string{"--shed-latency-target", "0s"}, func(string) string { return "" }); err != nil || c.Server.Shed.LatencyTarget != 0 {
		t.Errorf("--shed-latency-target 0s: %v, target %v; want accepted, off", err, c.Server.Shed.LatencyTarget)
	}
}

// TestCPUShareFlagRefusesMalformedValues: --shed-cpu-share and
// TRELLIS_SHED_CPU_SHARE take a number from 0 to 1 (default 0.5). A value
// that is not a number is a parse error naming the flag or the variable;
// one that parses but is out of range (negative, over 1, NaN, infinite)
// is refused by Validate, naming the flag.
func TestCPUShareFlagRefusesMalformedValues(t *testing.T) {
	t.Parallel()
	parse := func(flagValue, envValue string) (app.Config, error) {
		var c app.Config
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.RegisterFlags(fs)
		var args []string
		if flagValue != "" {
			args = []string{"--shed-cpu-share", flagValue}
		}
		err := app.ParseFlags(fs, args, func(key string) string {
			if key == "TRELLIS_SHED_CPU_SHARE" {
				return envValue
			}
			return ""
		})
		return c, err
	}
	if c, err := parse("", ""); err != nil || c.Server.Shed.CPUShare != 0.5 {
		t.Fatalf("default: %v, share %v; want 0.5", err, c.Server.Shed.CPUShare)
	}
	for _, v := range []string{"abc", "0.3x", "30%", "1e999", "0,3", "0.3\x00", strings.Repeat("9", 4096)} {
		if _, err := parse(v, ""); err == nil {
			t.Errorf("--shed-cpu-share %q: accepted", v)
		}
		if _, err := parse("", v); err == nil || !strings.Contains(err.Error(), "TRELLIS_SHED_CPU_SHARE") {
			t.Errorf("TRELLIS_SHED_CPU_SHARE=%q: %v, want an error naming the variable", v, err)
		}
	}
	for _, v := range []string{"-0.01", "1.01", "NaN", "Inf", "-Inf"} {
		c, err := parse(v, "")
		if err == nil {
			err = c.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), "--shed-cpu-share") {
			t.Errorf("--shed-cpu-share %q: %v, want refused naming the flag", v, err)
		}
	}
	for _, v := range []string{"0", "1", "0.5"} {
		c, err := parse(v, "")
		if err == nil {
			err = c.Validate()
		}
		if err != nil || fmt.Sprint(c.Server.Shed.CPUShare) != v {
			t.Errorf("--shed-cpu-share %q: %v, share %v; want accepted", v, err, c.Server.Shed.CPUShare)
		}
	}
}

// TestCPUMillisFlag: TRELLIS_SHED_CPU_MILLIS takes what Kubernetes' downward
// API writes for requests.cpu with divisor 1m (a whole number of
// millicores; deploy/k8s); anything else is a parse error naming the
// variable, never a silent zero.
func TestCPUMillisFlag(t *testing.T) {
	t.Parallel()
	parse := func(env string) (app.Config, error) {
		var c app.Config
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.RegisterFlags(fs)
		err := app.ParseFlags(fs, nil, func(key string) string {
			if key == "TRELLIS_SHED_CPU_MILLIS" {
				return env
			}
			return ""
		})
		if err == nil {
			err = c.Validate()
		}
		return c, err
	}
	if c, err := parse(""); err != nil || c.Server.Shed.CPUMillis != 0 {
		t.Fatalf("default: %v, %v; want 0 (GOMAXPROCS or the cgroup's limit)", err, c.Server.Shed.CPUMillis)
	}
	if c, err := parse("250"); err != nil || c.Server.Shed.CPUMillis != 250 {
		t.Errorf("250: %v, %v; want 250", err, c.Server.Shed.CPUMillis)
	}
	for _, v := range []string{"250m", "0.25", "-1", "abc", "1e3", strings.Repeat("9", 40), "250\x00"} {
		if _, err := parse(v); err == nil || !strings.Contains(err.Error(), "TRELLIS_SHED_CPU_MILLIS") {
			t.Errorf("TRELLIS_SHED_CPU_MILLIS=%q: %v, want an error naming the variable", v, err)
		}
	}
}

// TestConnectionLimitFlags: the four connection limits take a whole
// number, 0 meaning no limit. Anything that does not parse is an error
// naming the flag or the variable; a negative one is refused by Validate,
// naming the flag.
func TestConnectionLimitFlags(t *testing.T) {
	t.Parallel()
	for _, f := range []struct {
		name, env string
		def       int
		get       func(app.Config) int
	}{
		{"http-max-conns", "TRELLIS_HTTP_MAX_CONNS", gateway.DefaultMaxConns, func(c app.Config) int { return c.Gateway.Conns.Max }},
		{"http-max-conns-per-client", "TRELLIS_HTTP_MAX_CONNS_PER_CLIENT", gateway.DefaultMaxConnsPerClient, func(c app.Config) int { return c.Gateway.Conns.PerClient }},
		{"grpc-max-conns", "TRELLIS_GRPC_MAX_CONNS", mesh.DefaultMaxConns, func(c app.Config) int { return c.Server.Conns.Max }},
		{"grpc-max-conns-per-client", "TRELLIS_GRPC_MAX_CONNS_PER_CLIENT", mesh.DefaultMaxConnsPerClient, func(c app.Config) int { return c.Server.Conns.PerClient }},
	} {
		parse := func(args []string, env string) (app.Config, error) {
			var c app.Config
			fs := flag.NewFlagSet("run", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			c.RegisterFlags(fs)
			err := app.ParseFlags(fs, args, func(key string) string {
				if key == f.env {
					return env
				}
				return ""
			})
			if err == nil {
				err = c.Validate()
			}
			return c, err
		}
		if c, err := parse(nil, ""); err != nil || f.get(c) != f.def {
			t.Errorf("--%s default: %v, %d; want %d", f.name, err, f.get(c), f.def)
		}
		for _, v := range []string{"0", "1", "2147483648"} {
			if c, err := parse([]string{"--" + f.name, v}, ""); err != nil || fmt.Sprint(f.get(c)) != v {
				t.Errorf("--%s %s: %v, %d; want accepted", f.name, v, err, f.get(c))
			}
		}
		for _, v := range []string{"abc", "1.5", "10k", "1e3", "0x", strings.Repeat("9", 40), "64\x00", " 64"} {
			if _, err := parse(nil, v); err == nil || !strings.Contains(err.Error(), f.env) {
				t.Errorf("%s=%q: %v, want an error naming the variable", f.env, v, err)
			}
			if _, err := parse([]string{"--" + f.name, v}, ""); err == nil || !strings.Contains(err.Error(), f.name) {
				t.Errorf("--%s %q: %v, want an error naming the flag", f.name, v, err)
			}
		}
		for _, v := range []string{"-1", "-9223372036854775808"} {
			if _, err := parse([]string{"--" + f.name, v}, ""); err == nil || !strings.Contains(err.Error(), "--"+f.name) {
				t.Errorf("--%s %s: %v, want refused naming the flag", f.name, v, err)
			}
		}
	}
}

// TestRedisTimeoutFlagRefusesMalformedValues: --redis-timeout and its
// environment variable accept only Go durations (the bounds are
// TestValidate's); the default is 250 ms.
func TestRedisTimeoutFlagRefusesMalformedValues(t *testing.T) {
	t.Parallel()
	if c := app.Defaults(); c.RedisTimeout != 250*time.Millisecond {
		t.Fatalf("default Redis timeout %v, want 250ms", c.RedisTimeout)
	}
	refusesMalformedDurations(t, "redis-timeout", "TRELLIS_REDIS_TIMEOUT")
}

// refusesMalformedDurations: the duration flag name and its environment
// variable env accept only Go durations; anything else is an error naming
// the flag or the variable.
func refusesMalformedDurations(t *testing.T, name, env string) {
	t.Helper()
	for _, v := range []string{"", "abc", "2", "2 s", "-", "1e9", "9999999999h", "2s\x00", strings.Repeat("9", 4096) + "s"} {
		var c app.Config
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.RegisterFlags(fs)
		if err := app.ParseFlags(fs, []string{"--" + name, v}, func(string) string { return "" }); err == nil {
			t.Errorf("--%s %q: accepted", name, v)
		}
		if v == "" {
			continue // an empty variable means "not set"
		}
		var e app.Config
		fs = flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		e.RegisterFlags(fs)
		err := app.ParseFlags(fs, nil, func(key string) string {
			if key == env {
				return v
			}
			return ""
		})
		if err == nil || !strings.Contains(err.Error(), env) {
			t.Errorf("%s=%q: %v, want an error naming the variable", env, v, err)
		}
	}
}

// TestSheddingIsOnByDefault: every server and the gateway shed load unless
// told not to, and only on the CPU signal (docs/resilience.md, "Overload").
func TestSheddingIsOnByDefault(t *testing.T) {
	t.Parallel()
	c := app.Defaults()
	if !c.Server.Shed.Enabled || !c.Gateway.Shed || c.Server.Shed.RunQueue <= 0 || c.Server.Shed.MaxWait != 0 || c.Server.Shed.LatencyTarget != mesh.DefaultShedLatencyTarget {
		t.Errorf("shedding defaults %+v, gateway %v: want on, with the CPU signal and refusals at once (no queue)", c.Server.Shed, c.Gateway.Shed)
	}
}

// TestTargetsRunInDependencyOrder: whatever order targets are named in,
// modules are built after what they need.
func TestTargetsRunInDependencyOrder(t *testing.T) {
	t.Parallel()
	c := app.Defaults()
	c.Target = "gateway, order,user"
	got, err := app.TargetNames(c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "user,order,gateway" {
		t.Fatalf("targets %v, want user,order,gateway", got)
	}
}
