package gateway_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"

	"github.com/trellis-mesh/trellis/gateway"
)

// FuzzRequestBodies throws arbitrary bodies at every route that takes one.
// Whatever arrives, the gateway answers with a client error or success —
// never a 5xx, never a panic (a panic would fail the request and the test).
// Run longer with: go test -fuzz FuzzRequestBodies ./gateway
func FuzzRequestBodies(f *testing.F) {
	for _, seed := range []string{
		`{"email":"ada@example.com","name":"Ada","password":"correct-horse"}`,
		`{"email":"","name":"","password":""}`,
		`{"userId":"0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90","requestId":"r","items":[{"productId":"p","quantity":1,"unitPrice":{"currencyCode":"EUR","amountMinor":"1"}}]}`,
		`{"items":[{"quantity":99999999999}]}`,
		`{"name":"\u0000\ud800"}`,
		`[`, `null`, `"x"`, `{"a":{"b":{"c":[1,2,{}]}}}`, `{"email":1e400}`,
	} {
		f.Add(seed)
	}
	s := startSystem(f, nil)
	s.createUser(f, "fuzz@example.com")
	f.Fuzz(func(t *testing.T, body string) {
		for _, route := range []struct{ method, path string }{
			{"POST", "/api/v1/users"},
			{"PATCH", "/api/v1/users/0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90"},
			{"POST", "/api/v1/orders"},
			{"POST", "/api/v1/orders/0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90:cancel"},
		} {
			req, err := http.NewRequest(route.method, s.http.base+route.path, strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			// Signed in and JSON, so the body is read: without them every
			// body was answered 401 or 415 before it was looked at.
			req.Header.Set("Authorization", "Bearer "+s.http.token)
			req.Header.Set("Content-Type", "application/json")
			r := client{t: t, base: s.http.base}.send(req)
			if r.code >= 500 {
				t.Fatalf("%s %s with body %q: %d %s", route.method, route.path, body, r.code, r.body)
			}
			checkErrorMessage(t, r)
		}
	})
}

// checkErrorMessage: an error answer's message is valid UTF-8 and at most
// gateway.MaxErrorMessageBytes (and "…"), whatever the client sent.
func checkErrorMessage(t *testing.T, r response) {
	t.Helper()
	if r.code < 400 {
		return
	}
	var e struct {
		Message string `json:"message"`
	}
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("%d answer not in the error shape: %v: %.200s", r.code, err, r.body)
	}
	if len(e.Message) > gateway.MaxErrorMessageBytes+len("…") || !utf8.ValidString(e.Message) {
		t.Fatalf("%d answer's message, %d bytes: %.200q", r.code, len(e.Message), e.Message)
	}
}

// TestErrorMessagesAreBounded: what protojson or a route error quotes of
// the client's request comes back cut to gateway.MaxErrorMessageBytes. A
// 500 KB number, field name or path was sent back whole.
func TestErrorMessagesAreBounded(t *testing.T) {
	s := startSystem(t, nil)
	huge := strings.Repeat("9", 500_000)
	for _, c := range []struct {
		method, path, body string
		code               int
	}{
		{"POST", "/api/v1/orders", `{"items":[{"unitPrice":{"amountMinor":"` + huge + `"}}]}`, http.StatusBadRequest},
		{"POST", "/api/v1/orders", `{"items":[{"quantity":` + huge + `}]}`, http.StatusBadRequest},
		{"POST", "/api/v1/users", `{"` + strings.Repeat("\u00e9", 100_000) + `":1}`, http.StatusBadRequest},
		{"GET", "/api/v1/" + strings.Repeat("%C3%A9", 5_000), "", http.StatusNotFound},
	} {
		req, err := http.NewRequest(c.method, s.http.base+c.path, strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+s.http.token)
		req.Header.Set("Content-Type", "application/json")
		r := client{t: t, base: s.http.base}.send(req)
		if r.code != c.code {
			t.Errorf("%s %.60s: %d, want %d: %.200s", c.method, c.path, r.code, c.code, r.body)
		}
		checkErrorMessage(t, r)
		if !strings.HasSuffix(string(r.body), `…"}`) && !strings.Contains(string(r.body), `…",`) {
			t.Errorf("%s %.60s: message not cut: %.300s", c.method, c.path, r.body)
		}
	}
}

// FuzzRequestHeaders sends any header a client could send, on a read and a
// write: the answer is never a 5xx, whatever the header's name or value
// (deadlines, request ids, trace context, tokens, conditions, content
// negotiation, and names the gateway does not know).
// Run longer with: go test -fuzz FuzzRequestHeaders ./gateway
func FuzzRequestHeaders(f *testing.F) {
	for _, h := range [][2]string{
		{"Grpc-Timeout", "1n"}, {"Grpc-Timeout", "\xc4"}, {"X-Request-Id", "\xff\xfe"}, {"Traceparent", "00-zz"},
		{"Tracestate", "a=\xff"}, {"Authorization", "Bearer \xff"}, {"If-Match", "\"\xff\""}, {"Accept", "application/\xff"},
		{"Content-Type", "application/json; charset=\xff"}, {"Grpc-Metadata-Authorization", "Bearer x"}, {"Grpc-Metadata-X", "\xff"},
		{"Accept-Encoding", "gzip;q=\xff"}, {"Origin", "http://\xff"}, {"Cookie", "trellis_session=\xff"}, {"X-Forwarded-For", "\xff"},
	} {
		f.Add(h[0], h[1])
	}
	s := startSystem(f, nil)
	id := s.createUser(f, "fuzz-headers@example.com")
	f.Fuzz(func(t *testing.T, name, value string) {
		if !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(value) || strings.TrimSpace(value) != value {
			return // no client can send it as such
		}
		switch http.CanonicalHeaderKey(name) {
		case "Host", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "Expect", "Te", "Trailer", "Http2-Settings", "Keep-Alive", "Proxy-Connection":
			return // framing: the client library's own
		}
		for _, r := range []struct{ method, path, body string }{
			{"GET", "/api/v1/users/" + id, ""},
			{"POST", "/api/v1/orders", orderBody(id, "fuzz")},
		} {
			req, err := http.NewRequest(r.method, s.http.base+r.path, strings.NewReader(r.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+s.http.token)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(name, value)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return // the client library refused to send it
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 500 {
				t.Fatalf("%s %s with %s: %q: %d %s", r.method, r.path, name, value, resp.StatusCode, b)
			}
		}
	})
}
