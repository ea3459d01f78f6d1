package main

import (
	"database/sql"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	sysproc "github.com/trellis-mesh/trellis/internal/proc"
)

// proc is a process of the system under test, its output in a file.
type proc struct {
	*sysproc.Proc
	logPath string
}

// logDir holds every process's output: a file, as a deployment's log
// collector would take it, so writing logs costs the process what it
// costs in production and costs the load generator nothing.
var logDir = os.TempDir()

func start(name, bin string, args ...string) (*proc, error) {
	f, err := os.CreateTemp(logDir, name+"-*.log")
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	if pinCPUs != "" {
		bin, args = "taskset", append([]string{"-c", pinCPUs, bin}, args...)
	}
	if limited != nil {
		bin, args = limited.Command(bin, args...)
	}
	p, err := sysproc.Start(name, bin, f, args...)
	if err != nil {
		return nil, err
	}
	return &proc{Proc: p, logPath: f.Name()}, nil
}

// logTail is the end of the process's output, for error messages.
func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

func (p *proc) stop() { p.Stop(15 * time.Second) }

// usage is a process's CPU time and peak resident memory.
type usage = sysproc.Usage

// selfUsage is the CPU this process has used so far and its peak RSS.
func selfUsage() usage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return usage{}
	}
	sec := func(tv syscall.Timeval) float64 { return float64(tv.Sec) + float64(tv.Usec)/1e6 }
	return usage{CPUSeconds: sec(ru.Utime) + sec(ru.Stime), PeakRSSMiB: float64(ru.Maxrss) / 1024}
}

// since is the CPU used between before and u; the peak RSS stays u's.
func since(u, before usage) usage {
	return usage{CPUSeconds: u.CPUSeconds - before.CPUSeconds, PeakRSSMiB: u.PeakRSSMiB}
}

// plus sums CPU and keeps the higher peak RSS.
func plus(u, o usage) usage {
	return usage{CPUSeconds: u.CPUSeconds + o.CPUSeconds, PeakRSSMiB: max(u.PeakRSSMiB, o.PeakRSSMiB)}
}

// freeAddr is a free loopback address; the harness cannot run without one.
func freeAddr() string {
	a, err := sysproc.FreeAddr()
	if err != nil {
		panic(err)
	}
	return a
}

func waitReady(url string, p *proc) error {
	if err := p.WaitHTTP(url, 30*time.Second); err != nil {
		return fmt.Errorf("%w:\n%s", err, p.logTail())
	}
	return nil
}

// trellis is one `trellis run` process and its addresses.
type trellis struct {
	*proc
	user, order, http, admin string
}

// runTrellis runs trellis in plaintext: the scenarios measure the mesh
// against bare grpc-go and grpc-gateway, which run without TLS; scenario 6
// (runSecure) measures what security costs.
func runTrellis(bin, name, dataDir string, extra ...string) (*trellis, error) {
	return runTrellisWith(bin, name, dataDir, append([]string{"--insecure-plaintext"}, extra...)...)
}

// runSecure runs trellis as by default: mTLS and authorization with the
// development CA in dataDir/identity.
func runSecure(bin, name, dataDir string, extra ...string) (*trellis, error) {
	return runTrellisWith(bin, name, dataDir, append([]string{"--identity-dir", filepath.Join(dataDir, "identity")}, extra...)...)
}

func runTrellisWith(bin, name, dataDir string, extra ...string) (*trellis, error) {
	t := &trellis{user: freeAddr(), order: freeAddr(), http: freeAddr(), admin: freeAddr()}
	// Rate limits and the per-client connection limit off: the load comes
	// from one address and measures throughput, not the limiters.
	args := append([]string{"run", "--data-dir", dataDir, "--bcrypt-cost", "4", "--rate-read", "0", "--rate-write", "0", "--rate-auth", "0", "--http-max-conns-per-client", "0",
		"--user-addr", t.user, "--order-addr", t.order, "--http-addr", t.http, "--admin-addr", t.admin}, extra...)
	p, err := start(name, bin, args...)
	if err != nil {
		return nil, err
	}
	t.proc = p
	return t, waitReady("http://"+t.admin+"/readyz", p)
}

// split is the system with one process per component, PostgreSQL and a
// NATS server of its own: the deployment shape, on one machine.
type split struct {
	procs             map[string]*proc
	user, order, http string
	admins            []string
	dropDB            func()
}

func (s *split) stop() {
	for _, name := range []string{"gateway", "order", "user", "nats"} {
		if p := s.procs[name]; p != nil {
			p.stop()
		}
	}
	if s.dropDB != nil {
		s.dropDB()
	}
}

func runSplit(bin, tmp, pgURL, natsBin string, extra ...string) (*split, error) {
	s := &split{procs: map[string]*proc{}}
	dbURL, drop, err := createDatabase(pgURL)
	if err != nil {
		return nil, err
	}
	s.dropDB = drop
	natsAddr := freeAddr()
	host, port, _ := net.SplitHostPort(natsAddr)
	n, err := start("nats", natsBin, "-a", host, "-p", port, "-js", "-sd", tmp+"/split-nats")
	if err != nil {
		s.stop()
		return nil, err
	}
	s.procs["nats"] = n
	if err := waitTCP(natsAddr); err != nil {
		s.stop()
		return nil, err
	}
	common := []string{"--insecure-plaintext", "--rate-read", "0", "--rate-write", "0", "--rate-auth", "0", "--http-max-conns-per-client", "0", "--database-url", dbURL, "--nats-url", "nats://" + natsAddr, "--bcrypt-cost", "4"}
	s.user, s.order, s.http = freeAddr(), freeAddr(), freeAddr()
	for _, c := range []struct {
		name string
		args []string
	}{
		{"user", []string{"--user-addr", s.user}},
		{"order", []string{"--order-addr", s.order, "--user-upstream", s.user}},
		{"gateway", []string{"--http-addr", s.http, "--user-upstream", s.user, "--order-upstream", s.order}},
	} {
		admin := freeAddr()
		args := append(append(append([]string{"run", "--target", c.name, "--admin-addr", admin}, common...), c.args...), extra...)
		s.admins = append(s.admins, admin)
		p, err := start(c.name, bin, args...)
		if err != nil {
			s.stop()
			return nil, err
		}
		s.procs[c.name] = p
		if err := waitReady("http://"+admin+"/readyz", p); err != nil {
			s.stop()
			return nil, err
		}
	}
	return s, nil
}

// createDatabase makes a fresh database on the PostgreSQL at pgURL and
// returns its URL and a function that drops it.
func createDatabase(pgURL string) (string, func(), error) {
	admin, err := sql.Open("pgx", pgURL)
	if err != nil {
		return "", nil, err
	}
	defer admin.Close()
	name := fmt.Sprintf("bench_%d", time.Now().UnixNano())
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		return "", nil, fmt.Errorf("PostgreSQL at %s: %w", pgURL, err)
	}
	u, err := url.Parse(pgURL)
	if err != nil {
		return "", nil, err
	}
	u.Path = "/" + name
	return u.String(), func() {
		if a, err := sql.Open("pgx", pgURL); err == nil {
			_, _ = a.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
			a.Close()
		}
	}, nil
}
