package gateway_test

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TestClientMistakesAreAnswered400AndTripNothing sends what a hostile or
// careless client sends at the edge, each more times than a breaker
// tolerates: every one is a 4xx naming the problem, none leaks Go
// internals, and afterwards every route still works and /readyz is ready.
func TestClientMistakesAreAnswered400AndTripNothing(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	c := s.http
	uid := s.createUser(t, "edge@example.com")
	tests := []struct {
		name, method, path, body string
		header                   []string
		want                     int
		field                    string
	}{
		{"invalid UTF-8 user id", "GET", "/api/v1/users/%ff", "", nil, 400, "path"},
		{"invalid UTF-8 order id", "GET", "/api/v1/orders/%ff%fe", "", nil, 400, "path"},
		{"invalid UTF-8 cancel", "POST", "/api/v1/orders/%c3%28:cancel", "{}", nil, 400, "path"},
		{"invalid UTF-8 delete", "DELETE", "/api/v1/users/%ff", "", nil, 400, "path"},
		{"invalid UTF-8 query value", "GET", "/api/v1/orders?userId=" + uid + "&pageToken=%ff", "", nil, 400, "pageToken"},
		{"invalid UTF-8 query name", "GET", "/api/v1/users?%ff=1", "", nil, 400, "query"},
		{"bad percent-encoding", "GET", "/api/v1/users?pageSize=%zz", "", nil, 400, "query"},
		{"page size not a number", "GET", "/api/v1/users?pageSize=abc", "", nil, 400, "page_size"},
		{"page size overflows", "GET", "/api/v1/users?pageSize=99999999999", "", nil, 400, "page_size"},
		{"page size twice", "GET", "/api/v1/users?pageSize=1&pageSize=2", "", nil, 400, "page_size"},
		{"page size in both spellings", "GET", "/api/v1/users?pageSize=1&page_size=2", "", nil, 400, "page_size"},
		{"dotted name into a number", "GET", "/api/v1/users?pageSize.x=1", "", nil, 400, "pageSize"},
		{"a parameter 5 000 times", "GET", "/api/v1/users?" + strings.Repeat("pageSize=1&", 5000), "", nil, 400, "page_size"},
		{"form body", "POST", "/api/v1/users", "email=a", []string{"Content-Type", "application/x-www-form-urlencoded"}, 415, ""},
		{"text body", "POST", "/api/v1/orders", `{}`, []string{"Content-Type", "text/plain"}, 415, ""},
		{"gzip body", "POST", "/api/v1/users", "\x1f\x8b\x08\x00\x00\x00\x00\x00", []string{"Content-Type", "application/json", "Content-Encoding", "gzip"}, 415, ""},
		{"gzip among codings", "POST", "/api/v1/orders", `{}`, []string{"Content-Type", "application/json", "Content-Encoding", "identity, GZIP"}, 415, ""},
		{"trailing data", "POST", "/api/v1/users", `{"email":"t@example.com","name":"T","password":"correct-horse"}{"x":1}`, nil, 400, ""},
		{"trailing garbage", "POST", "/api/v1/users", `{"email":"t@example.com","name":"T","password":"correct-horse"} garbage`, nil, 400, ""},
		{"NUL in name", "POST", "/api/v1/users", `{"email":"n@example.com","name":"a\u0000b","password":"correct-horse"}`, nil, 400, "name"},
	}
	for _, tt := range tests {
		for range 4 { // more than the breaker's 3 consecutive failures
			r := c.do(tt.method, tt.path, tt.body, tt.header...)
			if r.code != tt.want {
				t.Fatalf("%s: status %d, want %d; body %s", tt.name, r.code, tt.want, r.body)
			}
			for _, leak := range []string{"strconv", "proto:", "grpc:", "utf8", "invalid syntax", "too many values", "1, 1"} {
				if strings.Contains(string(r.body), leak) {
					t.Errorf("%s: body leaks %q: %s", tt.name, leak, r.body)
				}
			}
			if tt.field != "" {
				if got := r.violations(t); len(got) == 0 || got[0] != tt.field {
					t.Errorf("%s: violations %v, want %s", tt.name, got, tt.field)
				}
			}
		}
	}
	if r := c.do("POST", "/api/v1/users", "x", "Content-Encoding", "br"); r.header.Get("Accept-Encoding") != "identity" {
		t.Errorf("an encoded body's 415 says Accept-Encoding %q, want identity", r.header.Get("Accept-Encoding"))
	}
	for i, enc := range []string{"", "identity", " Identity "} { // identity is no coding
		r := c.do("POST", "/api/v1/users", `{"email":"enc`+strconv.Itoa(i)+`@example.com","name":"E","password":"correct-horse"}`, "Content-Encoding", enc)
		wantStatus(t, r, http.StatusCreated)
	}
	wantStatus(t, c.do("GET", "/api/v1/users/"+uid, ""), http.StatusOK)
	wantStatus(t, c.do("GET", "/api/v1/orders?userId="+uid, ""), http.StatusOK)
	admin := client{t: t, base: "http://" + s.gw.Addr("admin")}
	wantStatus(t, admin.do("GET", "/readyz", ""), http.StatusOK)
	if m := string(admin.do("GET", "/metrics", "").body); strings.Contains(m, `to="open"} 1`) {
		t.Errorf("a breaker opened:\n%s", m)
	}
}

func TestHTTPSemantics(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	c := s.http
	uid := s.createUser(t, "sem@example.com")

	head := c.do("HEAD", "/api/v1/users/"+uid, "")
	wantStatus(t, head, http.StatusOK)
	if len(head.body) != 0 || !strings.HasPrefix(head.header.Get("Content-Type"), "application/json") {
		t.Errorf("HEAD: body %q, Content-Type %q", head.body, head.header.Get("Content-Type"))
	}
	wantStatus(t, c.do("HEAD", "/api/v1/users/"+uid+"x", ""), http.StatusBadRequest)

	del := c.do("DELETE", "/api/v1/users/"+uid, "")
	wantStatus(t, del, http.StatusNoContent)
	if ct := del.header.Get("Content-Type"); ct != "" || len(del.body) != 0 {
		t.Errorf("204 with Content-Type %q and body %q", ct, del.body)
	}
	for _, p := range []string{"/static/", "/static"} {
		if r := c.do("GET", p, ""); r.code != http.StatusNotFound || strings.Contains(string(r.body), "app.js") {
			t.Errorf("GET %s: %d %s, want 404 and no listing", p, r.code, r.body)
		}
	}
	wantStatus(t, c.do("GET", "/static/app.js", ""), http.StatusOK)
}

// TestConcurrentPatchesLoseNothingAndIfMatchIsHonoured: two PATCHes of
// different fields at once both stick (no read-modify-write of the whole
// row), and If-Match makes a change conditional: stale is 412.
func TestConcurrentPatchesLoseNothingAndIfMatchIsHonoured(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	c := s.http
	for i := range 15 {
		uid := s.createUser(t, "race"+strconv.Itoa(i)+"@example.com")
		email := "moved" + strconv.Itoa(i) + "@example.com"
		var wg sync.WaitGroup
		for _, body := range []string{`{"name":"Renamed"}`, `{"email":"` + email + `"}`} {
			wg.Go(func() {
				if r := c.do("PATCH", "/api/v1/users/"+uid, body); r.code != http.StatusOK {
					t.Errorf("PATCH %s: %d %s", body, r.code, r.body)
				}
			})
		}
		wg.Wait()
		got := c.do("GET", "/api/v1/users/"+uid, "").json(t)["user"].(map[string]any)
		if got["name"] != "Renamed" || got["email"] != email {
			t.Fatalf("after concurrent PATCHes: %v (an update was lost)", got)
		}
	}

	uid := s.createUser(t, "etag@example.com")
	read := c.do("GET", "/api/v1/users/"+uid, "")
	tag := read.header.Get("ETag")
	if tag == "" || tag != `"`+read.json(t)["user"].(map[string]any)["etag"].(string)+`"` {
		t.Fatalf("ETag header %q does not carry the user's etag: %s", tag, read.body)
	}
	first := c.do("PATCH", "/api/v1/users/"+uid, `{"name":"First"}`, "If-Match", tag)
	wantStatus(t, first, http.StatusOK)
	if first.header.Get("ETag") == tag {
		t.Error("etag did not change with the update")
	}
	stale := c.do("PATCH", "/api/v1/users/"+uid, `{"name":"Second"}`, "If-Match", tag)
	wantStatus(t, stale, http.StatusPreconditionFailed)
	wantStatus(t, c.do("PATCH", "/api/v1/users/"+uid, `{"name":"Third","etag":"v1"}`), http.StatusPreconditionFailed)
	wantStatus(t, c.do("PATCH", "/api/v1/users/"+uid, `{"name":"Any"}`, "If-Match", "*"), http.StatusOK)
	wantStatus(t, c.do("PATCH", "/api/v1/users/"+uid, `{"name":"Junk"}`, "If-Match", `"not-ours"`), http.StatusPreconditionFailed)
	wantStatus(t, c.do("DELETE", "/api/v1/users/"+uid, "", "If-Match", tag), http.StatusPreconditionFailed)

	oid := c.do("POST", "/api/v1/orders", orderBody(s.createUser(t, "etag-order@example.com"), "e1")).json(t)["order"].(map[string]any)["id"].(string)
	o := c.do("GET", "/api/v1/orders/"+oid, "")
	wantStatus(t, c.do("POST", "/api/v1/orders/"+oid+":cancel", "{}", "If-Match", `"v9"`), http.StatusPreconditionFailed)
	wantStatus(t, c.do("POST", "/api/v1/orders/"+oid+":cancel", "{}", "If-Match", o.header.Get("ETag")), http.StatusOK)
	fresh := c.do("GET", "/api/v1/users/"+uid, "").header.Get("ETag")
	wantStatus(t, c.do("DELETE", "/api/v1/users/"+uid, "", "If-Match", fresh), http.StatusNoContent)
}

// TestHeadersOverTheLimitAre431: the request line and headers are capped
// (64 KiB) before any handler runs.
func TestHeadersOverTheLimitAre431(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	r := s.http.do("GET", "/api/v1/users", "", "X-Big", strings.Repeat("x", 100<<10))
	wantStatus(t, r, http.StatusRequestHeaderFieldsTooLarge)
	wantStatus(t, s.http.do("GET", "/api/v1/users", "", "X-Small", strings.Repeat("x", 1<<10)), http.StatusOK)
}
