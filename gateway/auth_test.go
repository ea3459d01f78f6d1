package gateway_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/trellis-mesh/trellis/gateway"
	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/quota"
)

// signUpREST creates an account and signs it in through the gateway; it
// returns the user id and the sign-in answer.
func signUpREST(t *testing.T, s *system) (string, map[string]any) {
	t.Helper()
	email := "s" + uuid.NewString()[:8] + "@example.com"
	id := s.createUser(t, email)
	r := s.anon.do("POST", "/api/v1/auth:signIn", mustJSON(map[string]string{"email": email, "password": "correct-horse"}))
	wantStatus(t, r, http.StatusOK)
	return id, r.json(t)
}

// TestBearerTokensAtTheEdge: the gateway refuses a malformed or invalid
// Authorization header itself (401 with a Bearer challenge that says
// invalid_token) and passes a valid one on.
func TestBearerTokensAtTheEdge(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	id, in := signUpREST(t, s)
	tok := in["accessToken"].(string)
	if in["tokenType"] != "Bearer" || in["refreshToken"] == "" || in["userId"] != id {
		t.Fatalf("sign-in answer %v", in)
	}
	for _, tt := range []struct {
		name, header string
		want         int
		challenge    string
	}{
		{"valid", "Bearer " + tok, 200, ""},
		{"scheme in lower case", "bearer " + tok, 200, ""},
		{"none", "", 401, `Bearer realm="trellis"`},
		{"not bearer", "Basic YWRhOmFkYQ==", 401, `error="invalid_token"`},
		{"empty token", "Bearer ", 401, `error="invalid_token"`},
		{"garbage", "Bearer not.a.token", 401, `error="invalid_token"`},
		{"tampered", "Bearer " + tok[:len(tok)-4] + "AAAA", 401, `error="invalid_token"`},
		{"huge", "Bearer " + strings.Repeat("A", 8000), 401, `error="invalid_token"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := s.anon.do("GET", "/api/v1/users/"+id, "", "Authorization", tt.header)
			wantStatus(t, r, tt.want)
			if got := r.header.Get("WWW-Authenticate"); !strings.Contains(got, tt.challenge) || (tt.challenge == "") != (got == "") {
				t.Errorf("WWW-Authenticate %q, want one containing %q", got, tt.challenge)
			}
		})
	}
}

// TestJWKS: the public keys at /.well-known/jwks.json are an RFC 7517 key
// set with the key that signed the token, and no private part.
func TestJWKS(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	_, in := signUpREST(t, s)
	r := s.anon.do("GET", "/.well-known/jwks.json", "")
	wantStatus(t, r, http.StatusOK)
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(r.body, &set); err != nil || len(set.Keys) == 0 {
		t.Fatalf("key set %s: %v", r.body, err)
	}
	hdr, _, _ := strings.Cut(in["accessToken"].(string), ".")
	found := false
	for _, k := range set.Keys {
		if k["kty"] != "EC" || k["crv"] != "P-256" || k["alg"] != "ES256" || k["use"] != "sig" || k["x"] == "" || k["d"] != "" {
			t.Errorf("key %v", k)
		}
		found = found || strings.Contains(string(mustB64(t, hdr)), `"kid":"`+k["kid"]+`"`)
	}
	if !found {
		t.Errorf("no published key has the token's kid")
	}
}

// TestBrowserSessionCookie: with X-Session-Cookie the refresh token is
// an HttpOnly, SameSite=Strict cookie and not in the body; refresh and
// sign-out read it; sign-out clears it; a refresh without one is 401.
func TestBrowserSessionCookie(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	email := "c" + uuid.NewString()[:8] + "@example.com"
	s.createUser(t, email)
	r := s.anon.do("POST", "/api/v1/auth:signIn", mustJSON(map[string]string{"email": email, "password": "correct-horse"}), gateway.SessionHeader, "1")
	wantStatus(t, r, http.StatusOK)
	if _, ok := r.json(t)["refreshToken"]; ok {
		t.Errorf("the refresh token is in the body of a cookie-form answer: %s", r.body)
	}
	cookie := (&http.Response{Header: r.header}).Cookies()
	if len(cookie) != 1 || cookie[0].Name != gateway.SessionCookie || !cookie[0].HttpOnly || cookie[0].SameSite != http.SameSiteStrictMode || cookie[0].Path != "/api/v1" || cookie[0].Secure {
		t.Fatalf("cookie %+v, want one HttpOnly SameSite=Strict /api/v1 (not Secure over plain HTTP)", cookie)
	}
	withCookie := func(path string, c *http.Cookie) response {
		req, _ := http.NewRequest("POST", s.anon.base+path, strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(gateway.SessionHeader, "1")
		if c != nil {
			req.AddCookie(c)
		}
		return s.anon.send(req)
	}
	r = withCookie("/api/v1/auth:refresh", cookie[0])
	wantStatus(t, r, http.StatusOK)
	if r.json(t)["accessToken"] == "" {
		t.Fatalf("refresh answer %s", r.body)
	}
	next := (&http.Response{Header: r.header}).Cookies()
	if len(next) != 1 || next[0].Value == cookie[0].Value {
		t.Fatalf("refresh did not rotate the cookie: %+v", next)
	}
	wantStatus(t, withCookie("/api/v1/auth:refresh", cookie[0]), http.StatusUnauthorized) // reuse
	wantStatus(t, withCookie("/api/v1/auth:refresh", nil), http.StatusUnauthorized)
	r = withCookie("/api/v1/auth:signOut", next[0])
	wantStatus(t, r, http.StatusOK)
	if c := (&http.Response{Header: r.header}).Cookies(); len(c) != 1 || c[0].MaxAge >= 0 {
		t.Errorf("sign-out did not clear the cookie: %+v", c)
	}
}

// TestSignedInClientsAreLimitedAsThemselves: the per-client limits key a
// signed-in client by its user, not its address; and failed sign-ins of
// one account are 429 with Retry-After from the user service's limit.
func TestSignedInClientsAreLimitedAsThemselves(t *testing.T) {
	t.Parallel()
	s := startSystem(t, func(c *app.Config) {
		c.Gateway.Limits = gateway.RateLimits{Read: perMinute(3)}
	})
	a, ina := signUpREST(t, s)
	b, inb := signUpREST(t, s)
	for range 3 {
		wantStatus(t, s.anon.do("GET", "/api/v1/users/"+a, "", "Authorization", "Bearer "+ina["accessToken"].(string)), http.StatusOK)
	}
	wantStatus(t, s.anon.do("GET", "/api/v1/users/"+a, "", "Authorization", "Bearer "+ina["accessToken"].(string)), http.StatusTooManyRequests)
	// Same address, another user: its own quota.
	wantStatus(t, s.anon.do("GET", "/api/v1/users/"+b, "", "Authorization", "Bearer "+inb["accessToken"].(string)), http.StatusOK)
}

func TestFailedSignInsOfAnAccountAre429(t *testing.T) {
	t.Parallel()
	s := startSystemWith(t, func(u *app.Config) { u.User.Auth.SignInQuota = quota.Quota{N: 2, Per: time.Hour} }, nil)
	email := "l" + uuid.NewString()[:8] + "@example.com"
	s.createUser(t, email)
	for range 2 {
		wantStatus(t, s.anon.do("POST", "/api/v1/auth:signIn", mustJSON(map[string]string{"email": email, "password": "wrong-horse"})), http.StatusUnauthorized)
	}
	r := s.anon.do("POST", "/api/v1/auth:signIn", mustJSON(map[string]string{"email": email, "password": "correct-horse"}))
	wantStatus(t, r, http.StatusTooManyRequests)
	if r.header.Get("Retry-After") == "" {
		t.Errorf("429 without Retry-After")
	}
}

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSignInLimitWithRedisDownLetsAttemptsThroughAndSaysSo: with its
// shared store unreachable the per-account limit lets sign-ins through —
// wrong passwords answered 401, the right one 200, never a 5xx — and
// the user service counts every check it could not make.
func TestSignInLimitWithRedisDownLetsAttemptsThroughAndSaysSo(t *testing.T) {
	t.Parallel()
	s := startSystemWith(t, func(u *app.Config) {
		u.User.Auth.SignInQuota = quota.Quota{N: 1, Per: time.Hour}
		u.RedisURL, u.RedisTimeout = "redis://127.0.0.1:1/0", 50*time.Millisecond // nothing listens
	}, nil)
	email := "d" + uuid.NewString()[:8] + "@example.com"
	s.createUser(t, email)
	for range 3 {
		wantStatus(t, s.anon.do("POST", "/api/v1/auth:signIn", mustJSON(map[string]string{"email": email, "password": "wrong-horse"})), http.StatusUnauthorized)
	}
	wantStatus(t, s.anon.do("POST", "/api/v1/auth:signIn", mustJSON(map[string]string{"email": email, "password": "correct-horse"})), http.StatusOK)
	admin := client{t: t, base: "http://" + s.user.Addr("admin")}
	// This test's 4 checks and 3 counts, none answered (and the admin's
	// sign-ins that set the system up).
	metrics := string(admin.do("GET", "/metrics", "").body)
	var n float64
	for _, l := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(l, "trellis_user_signin_limit_store_errors_total "); ok {
			n, _ = strconv.ParseFloat(v, 64)
		}
	}
	if n < 7 {
		t.Errorf("trellis_user_signin_limit_store_errors_total %v, want at least 7", n)
	}
}
