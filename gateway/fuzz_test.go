package gateway_test

import (
	"net/http"
	"strings"
	"testing"
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
			r := client{t: t, base: s.http.base}.send(req)
			if r.code >= 500 {
				t.Fatalf("%s %s with body %q: %d %s", route.method, route.path, body, r.code, r.body)
			}
		}
	})
}
