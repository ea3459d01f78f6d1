package hostile

import (
	"context"
	"encoding/base64"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
)

// hostileTokens makes Authorization values by class: garbage, wrong
// schemes, JWT-shaped strings with random or hostile headers (alg none,
// HMAC, huge or odd kids, nested JSON), a real token damaged one byte at
// a time, and sizes up to the header limits.
func hostileTokens(rng *rand.Rand, real string) []string {
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	parts := strings.Split(real, ".")
	out := []string{"", "Bearer", "Bearer ", "Bearer  ", "bearer x", "Basic YTpi", "Token " + real, "Bearer " + real + " extra",
		"Bearer " + parts[0] + "." + parts[1] + ".", "Bearer " + parts[0] + "..", "Bearer ...", "Bearer " + strings.Repeat(".", 3000),
		"Bearer " + b64(`{"alg":"none","kid":"x"}`) + "." + parts[1] + ".",
		"Bearer " + b64(`{"alg":"HS256","kid":"x"}`) + "." + parts[1] + "." + b64("sig"),
		"Bearer " + b64(`{"alg":"ES256","kid":"`+strings.Repeat("k", 2000)+`"}`) + "." + parts[1] + "." + parts[2],
		"Bearer " + b64(`{"alg":"ES256","kid":{"a":[1,2,{"b":null}]}}`) + "." + parts[1] + "." + parts[2],
		"Bearer " + b64(`{"alg":"ES256","kid":"\u0000\u202e"}`) + "." + parts[1] + "." + parts[2],
		"Bearer " + b64(`{"alg":"ES256","crit":["exp"],"kid":"x"}`) + "." + parts[1] + "." + parts[2],
		"Bearer " + b64(`{"alg":"ES256","jwk":{"kty":"EC"}}`) + "." + parts[1] + "." + parts[2],
		"Bearer " + strings.Repeat("A", 4097), "Bearer " + strings.Repeat("A", 12000)}
	for range 40 { // the real token, one byte changed
		b := []byte(real)
		b[rng.IntN(len(b))] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."[rng.IntN(65)]
		out = append(out, "Bearer "+string(b))
	}
	for range 40 { // random printable junk
		n := rng.IntN(600)
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(0x20 + rng.IntN(0x5f))
		}
		out = append(out, "Bearer "+string(b))
	}
	return out
}

// TestHostileAuthorizationHeaders: whatever a client puts in the
// Authorization header, over REST and straight over gRPC, the answer is
// 401 / UNAUTHENTICATED (or, for a real token, success) — never a server
// fault, never a leak, and the process stays healthy.
func TestHostileAuthorizationHeaders(t *testing.T) {
	s := start(t)
	uid, real := s.signedIn(t)
	rng := rand.New(rand.NewPCG(7, 11))
	users := userv1.NewUserServiceClient(s.dial(t, s.user)) // sends the real token unless the call replaces it
	for _, h := range hostileTokens(rng, real) {
		req, _ := http.NewRequest("GET", "http://"+s.http+"/api/v1/users/"+uid, nil)
		if h != "" {
			req.Header.Set("Authorization", h)
		}
		resp, err := restClient.Do(req)
		if err != nil {
			t.Fatalf("REST %.60q: %v", h, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized && !(resp.StatusCode == http.StatusOK && h == "Bearer "+real) &&
			!(resp.StatusCode == http.StatusRequestHeaderFieldsTooLarge && len(h) > 8000) {
			t.Errorf("REST Authorization %.60q: %d, want 401", h, resp.StatusCode)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		md := metadata.MD{}
		if h != "" {
			md.Set("authorization", h)
		}
		_, err = userv1.NewUserServiceClient(s.dialBare(t, s.user)).GetUser(metadata.NewOutgoingContext(ctx, md), &userv1.GetUserRequest{Id: uid})
		cancel()
		st := status.Convert(err)
		if serverFaults[st.Code()] && !(len(h) > 8000 && st.Code() == codes.Unavailable) {
			t.Errorf("gRPC authorization %.60q: %v", h, err)
		}
		if st.Code() != codes.Unauthenticated && !(st.Code() == codes.OK && h == "Bearer "+real) && len(h) <= 8000 {
			t.Errorf("gRPC authorization %.60q: %v, want UNAUTHENTICATED", h, err)
		}
		for _, l := range leaks {
			if strings.Contains(st.Message(), l) {
				t.Errorf("message leaks %q: %s", l, st.Message())
			}
		}
	}
	if _, err := users.GetUser(context.Background(), &userv1.GetUserRequest{Id: uid}); err != nil {
		t.Errorf("the real token after the attack: %v", err)
	}
	s.healthy(t)
}

// TestHostileSessionCookies: the browser form of refresh and sign-out
// (X-Session-Cookie) with every class of cookie value — none, empty,
// junk, oversized, a second cookie of the same name, encodings —
// answers 4xx (refresh) or 200 (sign-out is idempotent), never a server
// fault.
func TestHostileSessionCookies(t *testing.T) {
	s := start(t)
	_, _ = s.signedIn(t)
	for _, v := range []string{"", "x", strings.Repeat("A", 127), strings.Repeat("A", 129), strings.Repeat("B", 5000),
		"a; trellis_refresh=b", "%ff%fe", "' OR 1=1--", "\u202e", "null"} {
		for _, path := range []string{"/api/v1/auth:refresh", "/api/v1/auth:signOut"} {
			req, _ := http.NewRequest("POST", "http://"+s.http+path, strings.NewReader("{}"))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Session-Cookie", "1")
			req.Header.Set("Cookie", "trellis_refresh="+v)
			resp, err := restClient.Do(req)
			if err != nil {
				t.Fatalf("%s with cookie %.40q: %v", path, v, err)
			}
			resp.Body.Close()
			switch {
			case resp.StatusCode >= 500:
				t.Errorf("%s with cookie %.40q: %d", path, v, resp.StatusCode)
			case path == "/api/v1/auth:refresh" && resp.StatusCode != 401 && resp.StatusCode != 400:
				t.Errorf("refresh with cookie %.40q: %d, want 400 or 401", v, resp.StatusCode)
			}
		}
	}
	s.healthy(t)
}
