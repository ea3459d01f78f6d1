// Command trellis runs the Trellis components: `trellis run` starts all of
// them in one process (or the --target subset), `trellis version` prints
// the build.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/trellis-mesh/trellis/gateway"
	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/redact"
	"github.com/trellis-mesh/trellis/mesh"
)

// version is stamped by the build (-ldflags "-X main.version=v1.2.3").
var version = ""

const usage = `usage: trellis <command> [flags]

commands:
  run           run components (default target all); "trellis run -h" lists flags
  events tail   print domain events from NATS as JSON lines; "trellis events tail -h"
  identity      issue a client or component certificate from the development CA
                ("trellis identity issue -h"), or print the NATS server configuration
                that enforces Trellis's event permissions ("trellis identity nats-config -h")
  users grant-admin
                give an existing account the admin role ("trellis users grant-admin -h")
  openapi       print the REST API's OpenAPI 3 document (what the gateway serves at /api/openapi.json)
  healthcheck   exit 0 if the local admin server's /readyz answers 200 (container health checks)
  version       print the version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return runCmd(args[1:], stderr)
	case "events":
		if len(args) < 2 || args[1] != "tail" {
			fmt.Fprint(stderr, "usage: trellis events tail [--subject S] [--all] [--nats-url URL]\n")
			return 2
		}
		return tailCmd(args[2:], stdout, stderr)
	case "identity":
		if len(args) < 2 || (args[1] != "issue" && args[1] != "nats-config") {
			fmt.Fprint(stderr, "usage: trellis identity issue [--name client/NAME] [--out DIR]\n       trellis identity nats-config --cert F --key F --bundle F\n")
			return 2
		}
		if args[1] == "issue" {
			return issueCmd(args[2:], stdout, stderr)
		}
		return natsConfigCmd(args[2:], stdout, stderr)
	case "users":
		if len(args) < 2 || args[1] != "grant-admin" {
			fmt.Fprint(stderr, "usage: trellis users grant-admin --email E [--data-dir D | --database-url URL]\n")
			return 2
		}
		return grantAdminCmd(args[2:], stdout, stderr)
	case "openapi":
		doc, err := gateway.OpenAPI()
		if err != nil {
			fmt.Fprintln(stderr, "trellis openapi:", err)
			return 1
		}
		fmt.Fprintln(stdout, string(doc))
		return 0
	case "healthcheck":
		return healthcheckCmd(args[1:], stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "trellis", buildVersion())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "trellis: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func runCmd(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("trellis run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg app.Config
	cfg.RegisterFlags(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: trellis run [flags]\n\nEvery flag can also be set by the environment variable in brackets.\n\nflags:")
		fs.VisitAll(func(f *flag.Flag) {
			fmt.Fprintf(stderr, "  --%s [%s] (default %q)\n      %s\n", f.Name, app.EnvName(f.Name), f.DefValue, f.Usage)
		})
	}
	if err := app.ParseFlags(fs, args, os.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "trellis:", err)
		return 2
	}
	log, flushLog, err := mesh.NewBufferedLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		fmt.Fprintln(stderr, "trellis:", err)
		return 2
	}
	defer flushLog()
	log = log.With("version", buildVersion())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	setMemoryLimit(log)
	// go-redis logs (a failed dial while Redis is away) through one
	// process-wide logger: into ours, as structured warnings, at most one
	// a second.
	redis.SetLogger(redisLog{log: log, every: rate.NewLimiter(1, 3)})
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		log.Error("start failed", "error", redact.String(err.Error()))
		return 1
	}
	if err := a.Run(ctx); err != nil {
		return 1
	}
	return 0
}

// healthcheckCmd asks this container's admin server whether it is ready,
// so images need no curl. The address comes from --admin-addr or
// TRELLIS_ADMIN_ADDR, as for trellis run.
func healthcheckCmd(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("trellis healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin-addr", ":9090", "admin address of the trellis to check")
	path := fs.String("path", "/readyz", "endpoint to check: /readyz (ready) or /healthz (alive)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := app.ParseFlags(fs, args, os.Getenv); err != nil {
		return 2
	}
	host, port, err := net.SplitHostPort(*admin)
	if err != nil {
		fmt.Fprintln(stderr, "trellis healthcheck: --admin-addr:", err)
		return 2
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	client := &http.Client{Timeout: *timeout}
	resp, err := client.Get("http://" + net.JoinHostPort(host, port) + *path)
	if err != nil {
		fmt.Fprintln(stderr, "trellis healthcheck:", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "trellis healthcheck: %s: %d %s", *path, resp.StatusCode, body)
		return 1
	}
	return 0
}

func tailCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("trellis events tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg app.TailConfig
	cfg.RegisterFlags(fs)
	if err := app.ParseFlags(fs, args, os.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.Tail(ctx, cfg, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "trellis events tail:", err)
		return 1
	}
	return 0
}

// grantAdminCmd makes an existing account an admin.
func grantAdminCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("trellis users grant-admin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg app.GrantAdminConfig
	cfg.RegisterFlags(fs)
	if err := app.ParseFlags(fs, args, os.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := app.GrantAdmin(context.Background(), cfg); err != nil {
		fmt.Fprintln(stderr, "trellis users grant-admin:", redact.String(err.Error()))
		return 1
	}
	fmt.Fprintf(stdout, "%s is an admin; tokens issued from now on carry the role\n", cfg.Email)
	return 0
}

// issueCmd writes a certificate, key and bundle and prints their directory,
// so a shell can use it: ID=$(trellis identity issue --name client/me).
func issueCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("trellis identity issue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg app.IssueConfig
	cfg.RegisterFlags(fs)
	if err := app.ParseFlags(fs, args, os.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	dir, err := app.Issue(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "trellis identity issue:", err)
		return 1
	}
	fmt.Fprintln(stdout, dir)
	return 0
}

// natsConfigCmd prints the nats-server configuration (TLS, users mapped by
// SPIFFE ID, per-identity permissions) for an external NATS.
func natsConfigCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("trellis identity nats-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	td := fs.String("trust-domain", "trellis.local", "trust domain of the installation")
	prefix := fs.String("nats-prefix", "", "subject and stream prefix, as given to trellis run")
	cert := fs.String("cert", "nats/svid.pem", "the NATS server's certificate (spiffe://<td>/trellis/nats: trellis identity issue --name trellis/nats)")
	key := fs.String("key", "nats/svid-key.pem", "its private key")
	bundle := fs.String("bundle", "nats/bundle.pem", "the trust bundle")
	if err := app.ParseFlags(fs, args, os.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fmt.Fprint(stdout, app.NATSServerConfig(*td, *prefix, *cert, *key, *bundle))
	return 0
}

// redisLog is go-redis's Logging on slog, rate-limited.
type redisLog struct {
	log   *slog.Logger
	every *rate.Limiter
}

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	if l.every.Allow() {
		l.log.WarnContext(ctx, "redis", "message", redact.String(fmt.Sprintf(format, v...)))
	}
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if rev != "" {
			if len(rev) > 12 {
				rev = rev[:12]
			}
			if dirty {
				rev += "-dirty"
			}
			return "dev-" + rev
		}
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
	}
	return "dev"
}

// setMemoryLimit makes the Go heap agree with the container: GOMEMLIMIT at
// 90% of the cgroup's memory limit (automemlimit), so the collector works
// harder before the kernel kills the process. A GOMEMLIMIT in the
// environment wins; no limit (a laptop) leaves it unlimited. A limit that
// cannot be read — cgroup v1 listed in /proc/self/cgroup but not mounted,
// as in many sandboxes — is not a fault of the process: one INFO line, not
// the library's own ERROR at every start (which alerting on ERROR lines
// would page on).
func setMemoryLimit(log *slog.Logger, opts ...memlimit.Option) {
	limit, err := memlimit.Set(append([]memlimit.Option{memlimit.WithRatio(0.9)}, opts...)...)
	switch {
	case err != nil:
		log.Info("GOMEMLIMIT left as it was: no memory limit could be read from the cgroup", "reason", err.Error())
	case limit > 0 && limit < math.MaxInt64:
		log.Info("GOMEMLIMIT", "bytes", limit)
	}
}
