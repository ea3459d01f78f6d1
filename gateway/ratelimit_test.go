package gateway_test

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/trellis-mesh/trellis/gateway"
	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/app/apptest"
)

func perMinute(n int) gateway.Quota { return gateway.Quota{N: n, Per: time.Minute} }

// readAnyUser is a read that costs nothing upstream but a lookup.
// readAnyUser is a read (class read) of some user: 401 for an anonymous
// client, which the limits count like any answer.
func readAnyUser(c client, header ...string) response {
	return c.do("GET", "/api/v1/users/"+uuid.NewString(), "", header...)
}

// TestRateLimitsPerClassWithHeaders: each class has its own quota per
// client; every answer says where the client stands (RateLimit-Policy,
// RateLimit); over the quota the answer is 429 with Retry-After and the
// usual JSON error, before anything reaches the services.
func TestRateLimitsPerClassWithHeaders(t *testing.T) {
	t.Parallel()
	s := startSystem(t, func(c *app.Config) {
		c.Gateway.Limits = gateway.RateLimits{Read: perMinute(5), Write: perMinute(3), Auth: perMinute(2)}
	})
	for i := range 5 {
		r := readAnyUser(s.anon)
		wantStatus(t, r, http.StatusUnauthorized)
		if got := r.header.Get("RateLimit-Policy"); got != `"read";q=5;w=60` {
			t.Fatalf("RateLimit-Policy %q", got)
		}
		if got, want := r.header.Get("RateLimit"), `"read";r=`+strconv.Itoa(4-i)+`;t=`; !strings.HasPrefix(got, want) {
			t.Fatalf("read %d: RateLimit %q, want prefix %q", i+1, got, want)
		}
	}
	r := readAnyUser(s.anon)
	wantStatus(t, r, http.StatusTooManyRequests)
	retry, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || retry < 1 || retry > 13 { // one request's worth of 5/min: 12 s
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	if body := r.json(t); body["code"] != float64(8) || !strings.Contains(body["message"].(string), "retry after") || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("429 body %s (%s)", r.body, r.header.Get("Content-Type"))
	}
	// Other classes are counted apart.
	for range 2 {
		wantStatus(t, s.anon.do("POST", "/api/v1/users", mustJSON(map[string]string{"email": uuid.NewString()[:8] + "@example.com", "name": "A", "password": "correct-horse"})), http.StatusCreated)
	}
	wantStatus(t, s.anon.do("POST", "/api/v1/users", `{}`), http.StatusTooManyRequests)
	for range 3 {
		wantStatus(t, s.anon.do("DELETE", "/api/v1/users/"+uuid.NewString(), ""), http.StatusUnauthorized)
	}
	wantStatus(t, s.anon.do("DELETE", "/api/v1/users/"+uuid.NewString(), ""), http.StatusTooManyRequests)
	// Health and the page are not API calls: never limited.
	wantStatus(t, s.anon.do("GET", "/health", ""), http.StatusOK)
}

// TestRateLimitKeyHeader: behind a proxy the client is the address the
// proxy appended (the header's rightmost); what the client wrote left of
// it does not give it a fresh quota; without a usable address there, the
// connection's.
func TestRateLimitKeyHeader(t *testing.T) {
	t.Parallel()
	s := startSystem(t, func(c *app.Config) {
		c.Gateway.Limits = gateway.RateLimits{Read: perMinute(2), KeyHeader: "X-Forwarded-For"}
	})
	for i := range 2 {
		wantStatus(t, readAnyUser(s.anon, "X-Forwarded-For", fmt.Sprintf("198.51.100.%d, 203.0.113.7", i)), http.StatusUnauthorized)
	}
	// A forged entry of its own each time: still the same client.
	wantStatus(t, readAnyUser(s.anon, "X-Forwarded-For", "192.0.2.200, 203.0.113.7"), http.StatusTooManyRequests)
	wantStatus(t, readAnyUser(s.anon, "X-Forwarded-For", "203.0.113.7"), http.StatusTooManyRequests)
	wantStatus(t, readAnyUser(s.anon, "X-Forwarded-For", "203.0.113.7, 198.51.100.9"), http.StatusUnauthorized)
	// Garbage in the header: the connection's address is the key.
	for _, junk := range []string{"not an address", "", "203.0.113.7x", strings.Repeat("9", 4000), strings.Repeat("1.2.3.4,", 6000) + "x"} {
		r := readAnyUser(s.anon, "X-Forwarded-For", junk)
		if r.code != http.StatusUnauthorized && r.code != http.StatusTooManyRequests {
			t.Fatalf("X-Forwarded-For %.20q: %d", junk, r.code)
		}
	}
}

func redisURL() string {
	if u := os.Getenv("TRELLIS_TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// TestRateLimitsSharedAcrossGatewaysThroughRedis: two gateway replicas
// with --redis-url count one client together; with Redis unreachable the
// limits let requests through instead of failing them.
func TestRateLimitsSharedAcrossGatewaysThroughRedis(t *testing.T) {
	t.Parallel()
	prefix := "t" + uuid.NewString()[:8] + "." // this test's own counters
	limits := func(c *app.Config) {
		c.Gateway.Limits = gateway.RateLimits{Read: perMinute(4)}
		c.RedisURL, c.Events.Prefix = redisURL(), prefix
		// Under -race on a loaded machine a Redis call can take longer
		// than the default 250 ms, and a check that times out lets the
		// request through (CI once saw 401 where 429 was due).
		c.RedisTimeout = 5 * time.Second
	}
	s := startSystem(t, limits)
	second := apptest.Config(t, app.TargetGateway)
	second.UserUpstream, second.OrderUpstream = s.user.Addr(app.TargetUser), s.order.Addr(app.TargetOrder)
	limits(&second)
	gw2 := client{t: t, base: "http://" + apptest.Start(t, second).Addr(app.TargetGateway)}
	for _, c := range []client{s.anon, gw2, s.anon, gw2} {
		wantStatus(t, readAnyUser(c), http.StatusUnauthorized)
	}
	wantStatus(t, readAnyUser(s.anon), http.StatusTooManyRequests)
	wantStatus(t, readAnyUser(gw2), http.StatusTooManyRequests)

	down := apptest.Config(t, app.TargetGateway)
	down.UserUpstream, down.OrderUpstream = second.UserUpstream, second.OrderUpstream
	down.Gateway.Limits = gateway.RateLimits{Read: perMinute(1)}
	down.RedisURL = "redis://127.0.0.1:1/0" // nothing listens
	down.RedisTimeout = 50 * time.Millisecond
	gw3 := client{t: t, base: "http://" + apptest.Start(t, down).Addr(app.TargetGateway)}
	for range 3 {
		wantStatus(t, readAnyUser(gw3), http.StatusUnauthorized)
	}
}

func TestParseQuota(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]gateway.Quota{
		"0": {}, "100/s": {N: 100, Per: time.Second}, "10/m": {N: 10, Per: time.Minute}, "5/h": {N: 5, Per: time.Hour}, "3/30s": {N: 3, Per: 30 * time.Second},
	} {
		got, err := gateway.ParseQuota(in)
		if err != nil || got != want {
			t.Errorf("ParseQuota(%q) = %v, %v; want %v", in, got, err, want)
		}
		if err == nil && got.String() != in && in != "3/30s" {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), in)
		}
	}
	for _, bad := range []string{"", "x", "-1/s", "0/s", "10", "10/", "10/d", "10/1ms", "10/48h", "1/s/s", "99999999999/s", " 1/s", "1/S"} {
		if _, err := gateway.ParseQuota(bad); err == nil {
			t.Errorf("ParseQuota(%q) accepted", bad)
		}
	}
}
