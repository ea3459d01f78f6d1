//go:build oidc

package oidc

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/app/apptest"
	"github.com/trellis-mesh/trellis/internal/proc"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

// hydraBin builds Hydra from the tools/hydra module (cached by Go's build
// cache after the first build), or takes $HYDRA_BIN.
func hydraBin(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("HYDRA_BIN"); b != "" {
		return b
	}
	dir := t.TempDir()
	// With SQLite (cgo), as Hydra's own -sqlite release: the in-memory store.
	cmd := exec.Command("go", "build", "-tags", "sqlite,sqlite_omit_load_extension", "-o", dir+"/hydra", "github.com/ory/hydra/v2")
	cmd.Dir = "../../tools/hydra"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build Hydra: %v\n%s", err, out)
	}
	return filepath.Join(dir, "hydra")
}

// hydra is a running Hydra: its issuer and admin URL.
type hydra struct{ issuer, admin string }

func startHydra(t *testing.T) *hydra {
	t.Helper()
	bin := hydraBin(t)
	public, admin := testenv.FreeAddr(t), testenv.FreeAddr(t)
	_, pport, _ := strings.Cut(public, ":")
	_, aport, _ := strings.Cut(admin, ":")
	h := &hydra{issuer: "http://" + public, admin: "http://" + admin}
	logs := &testenv.SyncBuffer{}
	// In-memory store, JWT access tokens, plain HTTP on loopback (--dev).
	t.Setenv("DSN", "memory")
	t.Setenv("URLS_SELF_ISSUER", h.issuer)
	t.Setenv("SERVE_PUBLIC_PORT", pport)
	t.Setenv("SERVE_PUBLIC_HOST", "127.0.0.1")
	t.Setenv("SERVE_ADMIN_PORT", aport)
	t.Setenv("SERVE_ADMIN_HOST", "127.0.0.1")
	t.Setenv("STRATEGIES_ACCESS_TOKEN", "jwt")
	t.Setenv("SECRETS_SYSTEM", "trellis-test-secret-"+uuid.NewString())
	t.Setenv("LOG_LEVEL", "warn")
	p, err := proc.StartIn(t.TempDir(), "hydra", bin, logs, "serve", "all", "--dev")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- hydra log ---\n%s", tail(logs.String(), 4000))
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(h.issuer + "/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("hydra not ready: %v\n%s", err, tail(logs.String(), 4000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	return h
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// client registers an OAuth 2.0 client for the client-credentials grant
// with scope and audience, and returns its id and secret.
func (h *hydra) client(t *testing.T, scope string, audience ...string) (string, string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"grant_types": []string{"client_credentials"}, "scope": scope, "audience": audience,
		"token_endpoint_auth_method": "client_secret_post", "access_token_strategy": "jwt"})
	resp, err := http.Post(h.admin+"/admin/clients", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var c struct{ ClientID, ClientSecret string }
	_ = json.Unmarshal(b, &struct {
		ID     *string `json:"client_id"`
		Secret *string `json:"client_secret"`
	}{&c.ClientID, &c.ClientSecret})
	if resp.StatusCode != http.StatusCreated || c.ClientID == "" {
		t.Fatalf("create client: %d %s", resp.StatusCode, b)
	}
	return c.ClientID, c.ClientSecret
}

// token gets a client-credentials access token.
func (h *hydra) token(t *testing.T, id, secret, scope, audience string) string {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {id}, "client_secret": {secret}, "scope": {scope}, "audience": {audience}}
	resp, err := http.PostForm(h.issuer+"/oauth2/token", form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(b, &tok); err != nil || resp.StatusCode != 200 || strings.Count(tok.AccessToken, ".") != 2 {
		t.Fatalf("token: %d %s", resp.StatusCode, b)
	}
	return tok.AccessToken
}

// TestTokensFromARealOpenIDProvider: with --oidc-issuer pointing at Hydra,
// a machine client's access token (client credentials, JWT) is accepted
// over REST and gRPC as a machine principal: with the admin scope it may
// list users; without, it is a principal that owns nothing; a token for
// another audience is refused; Trellis's own tokens keep working.
func TestTokensFromARealOpenIDProvider(t *testing.T) {
	h := startHydra(t)
	cfg := apptest.Config(t, app.TargetAll)
	cfg.Token.OIDCIssuer, cfg.Token.OIDCAudience, cfg.Token.OIDCAdminScope = h.issuer, "trellis", "trellis:admin"
	run := apptest.Start(t, cfg)
	uid, own := apptest.SignUp(t, run, "person@example.com")

	adminID, adminSecret := h.client(t, "trellis:admin trellis:read", "trellis", "elsewhere")
	readerID, readerSecret := h.client(t, "trellis:read", "trellis")
	admin := h.token(t, adminID, adminSecret, "trellis:admin", "trellis")
	reader := h.token(t, readerID, readerSecret, "trellis:read", "trellis")
	elsewhere := h.token(t, adminID, adminSecret, "trellis:admin", "elsewhere")

	gw := "http://" + run.Addr(app.TargetGateway)
	get := func(path, tok string) int {
		req, _ := http.NewRequest("GET", gw+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	users := userv1.NewUserServiceClient(run.Dial(t, app.TargetUser))
	list := func(tok string) codes.Code {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
		_, err := users.ListUsers(ctx, &userv1.ListUsersRequest{})
		return status.Code(err)
	}
	for _, tt := range []struct {
		name, path, tok string
		rest            int
		grpc            codes.Code // ListUsers
	}{
		{"admin scope lists users", "/api/v1/users", admin, 200, codes.OK},
		{"admin scope reads a user", "/api/v1/users/" + uid, admin, 200, codes.OK},
		{"no admin scope: listing is forbidden", "/api/v1/users", reader, 403, codes.PermissionDenied},
		{"no admin scope: a person's user does not exist", "/api/v1/users/" + uid, reader, 404, codes.PermissionDenied},
		{"another audience", "/api/v1/users", elsewhere, 401, codes.Unauthenticated},
		{"Trellis's own token still works", "/api/v1/users/" + uid, own, 200, codes.PermissionDenied},
	} {
		if got := get(tt.path, tt.tok); got != tt.rest {
			t.Errorf("%s: REST %s %d, want %d", tt.name, tt.path, got, tt.rest)
		}
		if got := list(tt.tok); got != tt.grpc {
			t.Errorf("%s: gRPC ListUsers %v, want %v", tt.name, got, tt.grpc)
		}
	}
	// Damaged: the provider's signature no longer matches.
	if got := get("/api/v1/users", admin[:len(admin)-3]+"AAA"); got != 401 {
		t.Errorf("damaged provider token: %d, want 401", got)
	}
}
