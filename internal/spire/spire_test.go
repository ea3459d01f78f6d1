//go:build spire

package spire

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/proc"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh/identity"
)

var trellisBin string

func TestMain(m *testing.M) { testenv.RunWithTrellis(m, &trellisBin) }

const td = "trellis.local"

// spireBins builds spire-server and spire-agent from the tools/spire
// module (cached by Go's build cache after the first, long, build), or
// takes them from $SPIRE_BIN_DIR.
func spireBins(t *testing.T) (server, agent string) {
	t.Helper()
	dir := os.Getenv("SPIRE_BIN_DIR")
	if dir == "" {
		dir = t.TempDir()
		cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/spiffe/spire/cmd/spire-server", "github.com/spiffe/spire/cmd/spire-agent")
		cmd.Dir = "../../tools/spire"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build SPIRE: %v\n%s", err, out)
		}
	}
	return filepath.Join(dir, "spire-server"), filepath.Join(dir, "spire-agent")
}

func write(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return string(out)
}

func start(t *testing.T, dir, name, bin string, args ...string) (*proc.Proc, *testenv.SyncBuffer) {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	p, err := proc.StartIn(dir, name, bin, logs, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- %s log ---\n%s", name, tail(logs.String(), 3000))
		}
	})
	return p, logs
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func eventually(t *testing.T, within time.Duration, what string, ok func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err = ok(); err == nil {
			return
		}
	}
	t.Fatalf("%s: not within %v: %v", what, within, err)
}

func TestTrellisOnSPIRE(t *testing.T) {
	serverBin, agentBin := spireBins(t)
	dir := t.TempDir()
	serverSock, agentSock := filepath.Join(dir, "server.sock"), filepath.Join(dir, "agent.sock")
	serverAddr := testenv.FreeAddr(t)
	host, port, _ := strings.Cut(serverAddr, ":")
	write(t, filepath.Join(dir, "server.conf"), fmt.Sprintf(`server {
  bind_address = %q
  bind_port = %q
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "WARN"
  default_x509_svid_ttl = "1h"
}
plugins {
  DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = %q } }
  KeyManager "memory" { plugin_data {} }
  NodeAttestor "join_token" { plugin_data {} }
}
`, host, port, serverSock, td, filepath.Join(dir, "server"), filepath.Join(dir, "server", "datastore.sqlite3")))
	write(t, filepath.Join(dir, "agent.conf"), fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "WARN"
  server_address = %q
  server_port = %q
  socket_path = %q
  trust_domain = %q
  insecure_bootstrap = true
}
plugins {
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
  WorkloadAttestor "unix" { plugin_data { discover_workload_path = true } }
}
`, filepath.Join(dir, "agent"), host, port, agentSock, td))

	start(t, dir, "spire-server", serverBin, "run", "-config", filepath.Join(dir, "server.conf"))
	eventually(t, 30*time.Second, "spire-server healthy", func() error {
		return exec.Command(serverBin, "healthcheck", "-socketPath", serverSock).Run()
	})
	node := "spiffe://" + td + "/host/test"
	token := regexp.MustCompile(`Token: (\S+)`).FindStringSubmatch(run(t, serverBin, "token", "generate", "-socketPath", serverSock, "-spiffeID", node))
	if token == nil {
		t.Fatal("no join token")
	}

	// Each component runs from its own copy of the binary: the unix
	// attestor tells them apart by path, as it would by user or container
	// in production.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bins := map[string]string{}
	for _, c := range []string{"user", "order", "gateway"} {
		bins[c] = filepath.Join(dir, "bin", c, "trellis")
		if err := os.MkdirAll(filepath.Dir(bins[c]), 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(trellisBin)
		if err != nil {
			t.Fatal(err)
		}
		write(t, bins[c], string(b))
		if err := os.Chmod(bins[c], 0o755); err != nil {
			t.Fatal(err)
		}
		run(t, serverBin, "entry", "create", "-socketPath", serverSock, "-parentID", node,
			"-spiffeID", "spiffe://"+td+"/trellis/"+c, "-selector", "unix:path:"+bins[c])
	}
	run(t, serverBin, "entry", "create", "-socketPath", serverSock, "-parentID", node,
		"-spiffeID", "spiffe://"+td+"/client/spire-test", "-selector", "unix:path:"+self)

	start(t, dir, "spire-agent", agentBin, "run", "-config", filepath.Join(dir, "agent.conf"), "-joinToken", token[1])

	// The test itself is a workload: it gets its SVID from the agent.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var src identity.Source
	eventually(t, 60*time.Second, "the agent serves the test its SVID", func() error {
		if _, err := os.Stat(agentSock); err != nil {
			return err
		}
		var err error
		src, err = identity.OpenWorkloadAPI(ctx, "unix://"+agentSock)
		return err
	})
	defer src.Close()
	me, err := identity.ID(src)
	if err != nil || me.String() != "spiffe://"+td+"/client/spire-test" {
		t.Fatalf("test's SVID: %v, %v", me, err)
	}

	user, order, gw := testenv.FreeAddr(t), testenv.FreeAddr(t), testenv.FreeAddr(t)
	natsAddr := testenv.FreeAddr(t)
	common := []string{"--identity-source", "spiffe", "--spiffe-socket", "unix://" + agentSock, "--bcrypt-cost", "4", "--log-level", "info"}
	admin := map[string]string{}
	logs := map[string]*testenv.SyncBuffer{}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"user", []string{"--user-addr", user, "--nats-listen", natsAddr}},
		{"order", []string{"--order-addr", order, "--user-upstream", user, "--nats-url", "tls://" + natsAddr}},
		{"gateway", []string{"--http-addr", gw, "--user-upstream", user, "--order-upstream", order}},
	} {
		admin[c.name] = testenv.FreeAddr(t)
		args := append(append([]string{"run", "--target", c.name, "--admin-addr", admin[c.name], "--data-dir", filepath.Join(dir, "data-"+c.name)}, common...), c.args...)
		var p *proc.Proc
		p, logs[c.name] = start(t, dir, c.name, bins[c.name], args...)
		// A component that exits fails the test at once, with its log;
		// a slow machine gets two minutes to start one.
		eventually(t, 2*time.Minute, c.name+" ready", func() error {
			select {
			case <-p.Exited():
				t.Fatalf("%s exited before it was ready:\n%s", c.name, tail(logs[c.name].String(), 3000))
			default:
			}
			resp, err := http.Get("http://" + admin[c.name] + "/readyz")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("readyz %d", resp.StatusCode)
			}
			return nil
		})
	}

	// Through the gateway: gateway → user and order over mTLS with SPIRE
	// SVIDs; the order service learns of the user from the user service's
	// event over NATS authenticated with them too.
	access := ""
	post := func(path, body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+gw+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if access != "" {
			req.Header.Set("Authorization", "Bearer "+access)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := post("/api/v1/users", `{"email":"spire@example.com","name":"Spire","password":"correct-horse"}`)
	id := regexp.MustCompile(`"id":\s*"([^"]+)"`).FindStringSubmatch(body)
	if code != http.StatusCreated || id == nil {
		t.Fatalf("create user through the gateway: %d %s", code, body)
	}
	code, body = post("/api/v1/auth:signIn", `{"email":"spire@example.com","password":"correct-horse"}`)
	tok := regexp.MustCompile(`"accessToken":\s*"([^"]+)"`).FindStringSubmatch(body)
	if code != http.StatusOK || tok == nil {
		t.Fatalf("sign in through the gateway: %d %s", code, body)
	}
	access = tok[1]
	eventually(t, 30*time.Second, "an order for the new user is confirmed", func() error {
		code, body := post("/api/v1/orders", `{"userId":"`+id[1]+`","requestId":"spire-1","items":[{"productId":"book","quantity":1,"unitPrice":{"currencyCode":"EUR","amountMinor":"100"}}]}`)
		if !strings.Contains(body, "ORDER_STATUS_CONFIRMED") {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	// Access logs are written in batches: wait for the lines.
	for c, want := range map[string]string{"user": "trellis/gateway", "order": "trellis/gateway", "user ": "trellis/order"} {
		eventually(t, 10*time.Second, strings.TrimSpace(c)+"'s access log names its caller "+want, func() error {
			if !strings.Contains(logs[strings.TrimSpace(c)].String(), `"peer.id":"spiffe://`+td+`/`+want+`"`) {
				return fmt.Errorf("not yet")
			}
			return nil
		})
	}

	// A client with its SPIRE identity calls the user service directly.
	conn, err := grpc.NewClient(user, grpc.WithTransportCredentials(identity.ClientCredentials(src, identity.Component(me.TrustDomain(), "user"), testenv.Logger(), identity.NewMetrics(prometheus.NewRegistry()))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := userv1.NewUserServiceClient(conn).GetUser(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+access), &userv1.GetUserRequest{Id: id[1]}); err != nil {
		t.Fatalf("client/spire-test → GetUser: %v", err)
	}
}
