package main

import (
	"bytes"
	"context"
	"flag"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

var blockRe = regexp.MustCompile("(?s)<!-- readme-test expect=\"([^\"]+)\" -->\\s*```sh\\n(.*?)```")

func readme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// trellisBin is the trellis the README blocks run, built once for the
// package.
var trellisBin string

func TestMain(m *testing.M) { testenv.RunWithTrellis(m, &trellisBin) }

// TestReadmeCommands runs the built trellis with its defaults (the ports
// the README uses) in a temp dir, runs every marked README block as
// written, then stops it with SIGTERM and expects a clean exit.
func TestReadmeCommands(t *testing.T) {
	blocks := blockRe.FindAllStringSubmatch(readme(t), -1)
	if len(blocks) < 2 {
		t.Fatalf("README has %d marked blocks, want the grpcurl and curl ones", len(blocks))
	}
	root, _ := filepath.Abs("../..")
	var logs bytes.Buffer
	cmd := exec.Command(trellisBin, "run", "--bcrypt-cost", "4")
	cmd.Dir = t.TempDir() // ./data lands here
	// The blocks run in the repository; they find the development CA
	// where this trellis made it (a user runs both in one directory).
	idEnv := "TRELLIS_IDENTITY_DIR=" + filepath.Join(cmd.Dir, "data", "identity")
	cmd.Env = append(os.Environ(), idEnv)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	waitReady(t, "http://localhost:9090/readyz", exited, &logs)
	var hcErr bytes.Buffer
	if code := run([]string{"healthcheck"}, &hcErr, &hcErr); code != 0 {
		t.Errorf("trellis healthcheck against a ready trellis: exit %d, %s", code, hcErr.String())
	}
	if code := run([]string{"healthcheck", "--admin-addr", "127.0.0.1:1"}, &hcErr, &hcErr); code != 1 {
		t.Errorf("trellis healthcheck against nothing: exit %d, want 1", code)
	}

	for i, b := range blocks {
		sh := exec.Command("bash", "-euo", "pipefail", "-c", b[2])
		sh.Dir = root
		sh.Env = append(os.Environ(), idEnv)
		out, err := sh.CombinedOutput()
		if err != nil {
			t.Fatalf("README block %d failed: %v\n%s\n--- block ---\n%s", i+1, err, out, b[2])
		}
		if !strings.Contains(string(out), b[1]) {
			t.Errorf("README block %d output lacks %q:\n%s", i+1, b[1], out)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("trellis exited with %v after SIGTERM\n%s", err, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("trellis did not exit within 15s of SIGTERM\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), `"msg":"stopped"`) {
		t.Errorf("no shutdown log line:\n%s", logs.String())
	}
	_ = os.Remove(filepath.Join(root, "data")) // never created: data went to the temp dir
}

func waitReady(t *testing.T, url string, exited chan error, logs *bytes.Buffer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("trellis exited early: %v\n%s", err, logs.String())
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 30s\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestReadmeDocumentsEveryFlag keeps the configuration table true: every
// flag of `trellis run` is a row with its environment variable and
// default, and there are no rows for flags that do not exist.
func TestReadmeDocumentsEveryFlag(t *testing.T) {
	rows := map[string][]string{}
	for _, m := range regexp.MustCompile("(?m)^\\| `--([a-z0-9-]+)` \\| `([A-Z0-9_]+)` \\|\\s*`?([^|`]*?)`?\\s*\\|").FindAllStringSubmatch(readme(t), -1) {
		rows[m[1]] = []string{m[2], strings.TrimSpace(m[3])}
	}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var cfg app.Config
	cfg.RegisterFlags(fs)
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		names = append(names, f.Name)
		row, ok := rows[f.Name]
		if !ok {
			t.Errorf("README configuration table lacks --%s", f.Name)
			return
		}
		if row[0] != app.EnvName(f.Name) {
			t.Errorf("--%s: README says env %s, the binary reads %s", f.Name, row[0], app.EnvName(f.Name))
		}
		if want := f.DefValue; row[1] != want && !(want == "" && row[1] == "local") {
			t.Errorf("--%s: README says default %q, the binary has %q", f.Name, row[1], want)
		}
	})
	for name := range rows {
		if !slices.Contains(names, name) {
			t.Errorf("README documents --%s, which trellis run does not have", name)
		}
	}
}

func TestVersionAndUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "trellis ") {
		t.Errorf("version: exit %d, output %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"bogus"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "unknown command") {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut.String())
	}
	errOut.Reset()
	if code := run([]string{"run", "--target", "nope"}, &out, &errOut); code == 0 {
		t.Errorf("bad target accepted")
	}
}

// runReadmeBlock runs the README block marked <!-- readme-test name -->
// in an empty directory with the built trellis on PATH, killing everything
// it started after timeout, and returns its output and error.
func runReadmeBlock(t *testing.T, name string, timeout time.Duration) (string, error) {
	t.Helper()
	m := regexp.MustCompile("(?s)<!-- readme-test " + name + " -->\\s*```sh\\n(.*?)```").FindStringSubmatch(readme(t))
	if m == nil {
		t.Fatalf("README has no %s block", name)
	}
	dir := t.TempDir() // holds the binary as "trellis", whatever TRELLIS_TEST_BIN names it
	if err := os.Symlink(trellisBin, filepath.Join(dir, "trellis")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	sh := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", m[1])
	sh.Dir = t.TempDir()
	sh.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	sh.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	sh.Cancel = func() error { return syscall.Kill(-sh.Process.Pid, syscall.SIGKILL) }
	sh.WaitDelay = 5 * time.Second // then stop waiting for whatever holds the output open
	var out bytes.Buffer
	sh.Stdout, sh.Stderr = &out, &out
	err := sh.Run()
	_ = syscall.Kill(-sh.Process.Pid, syscall.SIGKILL) // anything left in the background
	return out.String(), err
}

// TestReadmeEventsTail runs the events-tail block: a trellis exposing its
// NATS and a tail of it, which says what it follows (it runs until
// stopped, so the test stops it).
func TestReadmeEventsTail(t *testing.T) {
	out, _ := runReadmeBlock(t, "events-tail", 15*time.Second)
	if !strings.Contains(out, "following trellis.user.v1.* on nats://127.0.0.1:4223") {
		t.Errorf("events tail did not start following:\n%s", out)
	}
}

// TestReadmeSeparateProcesses runs the README's "separate processes"
// block as written, with the built trellis on PATH, in an empty directory:
// three processes, one embedded NATS they share, a user created through
// the gateway, all stopped again.
func TestReadmeSeparateProcesses(t *testing.T) {
	out, err := runReadmeBlock(t, "separate-processes", 90*time.Second)
	if err != nil {
		t.Fatalf("README separate-processes block failed: %v\n%s", err, out)
	}
	if !strings.Contains(out, `"email":"sep@example.com"`) {
		t.Errorf("no user created through the gateway:\n%s", out)
	}
}
