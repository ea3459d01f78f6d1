// Package contracts_test checks the contracts in proto/ the way their users
// meet them: buf's breaking-change rules must catch a real break, and a
// consumer repository must be able to generate a working client from
// proto/ alone.
package contracts_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/app/apptest"
)

// repoRoot is the module root (tests run in their package directory).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "buf.yaml")); err != nil {
		t.Fatalf("no buf.yaml at %s: %v", root, err)
	}
	return root
}

// tool runs a pinned tool from tools/go.mod in dir. dir must hold a go.mod
// (go tool -modfile needs a main module): the repo root or a consumer
// module.
func tool(t *testing.T, root, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"tool", "-modfile=" + filepath.Join(root, "tools", "go.mod")}, args...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// copyTree copies src into dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
}

func edit(t *testing.T, path string, from, to string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), from) {
		t.Fatalf("%s does not contain %q", path, from)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(b), from, to, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBreakingChangesAreCaught makes real breaks in a copy of the contracts
// and checks that buf breaking, configured as in buf.yaml, rejects each one
// and names the rule.
func TestBreakingChangesAreCaught(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	cases := []struct {
		name, file, from, to, rule string
	}{
		{"field removed", "trellis/user/v1/user.proto", "  string name = 3;\n", "  reserved 3;\n", "FIELD_NO_DELETE"},
		{"field renumbered", "trellis/order/v1/order.proto", "string request_id = 3;", "string request_id = 30;", "FIELD_NO_DELETE"},
		{"field type changed", "trellis/order/v1/order.proto", "int32 quantity = 2;", "int64 quantity = 2;", "FIELD_SAME_TYPE"},
		{"rpc removed", "trellis/order/v1/order.proto", "  rpc CancelOrder(CancelOrderRequest) returns (CancelOrderResponse);\n", "", "RPC_NO_DELETE"},
		{"enum value renamed", "trellis/order/v1/order.proto", "ORDER_STATUS_CANCELLED = 3;", "ORDER_STATUS_CANCELED = 3;", "ENUM_VALUE_SAME_NAME"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			before, after := t.TempDir(), t.TempDir()
			for _, dir := range []string{before, after} {
				copyTree(t, filepath.Join(root, "proto"), filepath.Join(dir, "proto"))
				b, _ := os.ReadFile(filepath.Join(root, "buf.yaml"))
				if err := os.WriteFile(filepath.Join(dir, "buf.yaml"), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// Unchanged contracts pass.
			if out, err := tool(t, root, root, "buf", "breaking", after, "--against", before, "--error-format=msvs"); err != nil {
				t.Fatalf("identical contracts reported as breaking: %v\n%s", err, out)
			}
			edit(t, filepath.Join(after, "proto", tc.file), tc.from, tc.to)
			out, err := tool(t, root, root, "buf", "breaking", after, "--against", before, "--error-format=msvs")
			if err == nil {
				t.Fatalf("buf breaking accepted a %s", tc.name)
			}
			if !strings.Contains(out, tc.rule) {
				t.Errorf("buf breaking output does not name %s:\n%s", tc.rule, out)
			}
		})
	}
}

// TestConsumerRepositoryGeneratesWorkingClient plays a repository that
// depends on Trellis only through its contracts: its own go.mod, its own
// buf.gen.yaml whose input is this repo's proto/ (managed mode rewrites
// go_package into the consumer's module), a generated Go client, built and
// run as a separate program against a real user service.
func TestConsumerRepositoryGeneratesWorkingClient(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	dir := t.TempDir()
	toolsMod := filepath.Join(root, "tools", "go.mod")
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("buf.gen.yaml", `version: v2
managed:
  enabled: true
  override:
    - file_option: go_package_prefix
      value: example.com/consumer/gen
inputs:
  - directory: `+filepath.Join(root, "proto")+`
plugins:
  - local: [go, tool, -modfile=`+toolsMod+`, protoc-gen-go]
    out: gen
    opt: paths=source_relative
  - local: [go, tool, -modfile=`+toolsMod+`, protoc-gen-go-grpc]
    out: gen
    opt: paths=source_relative
`)
	// The consumer pins the same grpc and protobuf versions Trellis uses.
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	require := "require (\n"
	for _, m := range []string{"google.golang.org/grpc", "google.golang.org/protobuf"} {
		v := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(m) + ` (v\S+)`).FindStringSubmatch(string(mod))
		if v == nil {
			t.Fatalf("go.mod does not require %s", m)
		}
		require += "\t" + m + " " + v[1] + "\n"
	}
	write("go.mod", "module example.com/consumer\n\ngo 1.26\n\n"+require+")\n")
	write("main.go", `package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"crypto/tls"
	"crypto/x509"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	userv1 "example.com/consumer/gen/trellis/user/v1"
)

// tlsConfig is plain crypto/tls with the three files `+"`trellis identity issue`"+`
// writes: the client certificate, its key, and the trust bundle to verify
// the server by its DNS name.
func tlsConfig(dir string) *tls.Config {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid-key.pem"))
	if err != nil {
		panic(err)
	}
	bundle, err := os.ReadFile(filepath.Join(dir, "bundle.pem"))
	if err != nil {
		panic(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle)
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS13}
}

func main() {
	conn, err := grpc.NewClient(os.Args[1], grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig(os.Args[2]))))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := userv1.NewUserServiceClient(conn)
	created, err := c.CreateUser(ctx, &userv1.CreateUserRequest{Email: "sdk@example.com", Name: "SDK", Password: "correct-horse"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "create:", err)
		os.Exit(1)
	}
	signedIn, err := userv1.NewAuthServiceClient(conn).SignIn(ctx, &userv1.SignInRequest{Email: "sdk@example.com", Password: "correct-horse"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "sign in:", err)
		os.Exit(1)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+signedIn.GetAccessToken())
	got, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: created.GetUser().GetId()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "get:", err)
		os.Exit(1)
	}
	fmt.Println(got.GetUser().GetId(), got.GetUser().GetEmail())
}
`)
	if out, err := tool(t, root, dir, "buf", "generate"); err != nil {
		t.Fatalf("consumer buf generate: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "gen", "trellis", "user", "v1", "user_grpc.pb.go")); err != nil {
		t.Fatalf("no generated client: %v", err)
	}
	run := func(args ...string) string {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("mod", "tidy")
	run("build", "-o", "consumer", ".")

	cfg := apptest.Config(t, app.TargetUser)
	srv := apptest.Start(t, cfg)
	ids := apptest.ClientFiles(t, cfg, "sdk")
	cmd := exec.Command(filepath.Join(dir, "consumer"), srv.Addr(app.TargetUser), ids)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("consumer program: %v\n%s", err, out)
	}
	fields := strings.Fields(string(out))
	if len(fields) != 2 || fields[1] != "sdk@example.com" {
		t.Fatalf("consumer printed %q", out)
	}
	// The user the consumer created is really there.
	c := userv1.NewUserServiceClient(srv.DialAs(t, app.TargetUser, apptest.Admin(t, srv)))
	if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: fields[0]}); err != nil {
		t.Errorf("user created by the consumer: %v", err)
	}
}
