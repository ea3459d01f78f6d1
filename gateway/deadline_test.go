package gateway_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"
)

// TestClientDeadline: a REST client may bound its request with
// Grpc-Timeout. When that deadline, shorter than the gateway's own per-call
// one (--upstream-timeout, 2 s here), runs out, the answer is 408 with the
// gRPC code DEADLINE_EXCEEDED, saying which deadline it was — the client's
// choice, never a 5xx, and never counted against an upstream's breaker.
func TestClientDeadline(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	id := s.createUser(t, "deadline@example.com")
	for v, want := range map[string]string{"1n": "1ns", "1u": "1µs", "0000000000000000000000000000000000000002n": "2ns"} { // gone before the call is sent
		r := s.http.do("GET", "/api/v1/users/"+id, "", "Grpc-Timeout", v)
		wantStatus(t, r, http.StatusRequestTimeout)
		if j := r.json(t); j["code"] != 4.0 || !strings.Contains(j["message"].(string), "Grpc-Timeout, "+want) {
			t.Errorf("Grpc-Timeout %s: %s", v, r.body)
		}
	}
	// Many of them, on writes too: the breakers stay closed.
	for range 40 {
		wantStatus(t, s.http.do("POST", "/api/v1/orders", orderBody(id, "r"), "Grpc-Timeout", "1u"), http.StatusRequestTimeout)
	}
	wantStatus(t, s.http.do("POST", "/api/v1/orders", orderBody(id, "after")), http.StatusCreated)
	// Long enough: served, whether it binds or the gateway's own does.
	for _, v := range []string{"1500m", "10S", "99999999H", "0n"} {
		wantStatus(t, s.http.do("GET", "/api/v1/users/"+id, "", "Grpc-Timeout", v), http.StatusOK)
	}
	wantStatus(t, s.http.do("GET", "/api/v1/users/"+id, "", "Grpc-Timeout", "soon"), http.StatusBadRequest)
}

// FuzzClientDeadline: whatever Grpc-Timeout a client sends, the answer
// is not a 5xx; a malformed one is 400; one the gateway's deadline
// outlasts is served.
// Run longer with: go test -fuzz FuzzClientDeadline ./gateway
func FuzzClientDeadline(f *testing.F) {
	for _, v := range []string{"1n", "1m", "2S", "1500m", "0n", "99999999H", "18446744073709551616n", "-5S", "+1S", "5", "S", "1x", "\u0661S", "00000001M"} {
		f.Add(v)
	}
	s := startSystem(f, nil)
	id := s.createUser(f, "fuzz-deadline@example.com")
	f.Fuzz(func(t *testing.T, v string) {
		if v == "" || !httpguts.ValidHeaderFieldValue(v) || strings.TrimSpace(v) != v {
			return // no client can send it as such
		}
		r := client{t: t, base: s.http.base, token: s.http.token}.do("GET", "/api/v1/users/"+id, "", "Grpc-Timeout", v)
		d, ok := parseTimeout(v)
		switch {
		case r.code >= 500:
			t.Fatalf("Grpc-Timeout %q: %d %s", v, r.code, r.body)
		case !ok && r.code != http.StatusBadRequest:
			t.Fatalf("malformed Grpc-Timeout %q: %d %s", v, r.code, r.body)
		case ok && (d == 0 || d >= 2*time.Second) && r.code != http.StatusOK:
			t.Fatalf("Grpc-Timeout %q (%v): %d %s", v, d, r.code, r.body)
		}
	})
}

// parseTimeout is gRPC's timeout encoding as the test reads it: digits,
// then one unit.
func parseTimeout(v string) (time.Duration, bool) {
	units := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}
	if len(v) < 2 || units[v[len(v)-1]] == 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(v[:len(v)-1], 10, 64) // what grpc-gateway reads it with
	if err != nil {
		return 0, false
	}
	u := units[v[len(v)-1]]
	if n > uint64(1<<63-1)/uint64(u) {
		return 1<<63 - 1, true
	}
	return time.Duration(n) * u, true
}
