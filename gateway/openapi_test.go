package gateway_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/google/uuid"

	"github.com/trellis-mesh/trellis/gateway"
	"github.com/trellis-mesh/trellis/internal/app"
)

// loadDoc reads the document the gateway serves and checks it with
// kin-openapi's loader and validator (OpenAPI 3.0).
func loadDoc(t *testing.T, s *system) *openapi3.T {
	t.Helper()
	r := s.anon.do("GET", "/api/openapi.json", "")
	wantStatus(t, r, http.StatusOK)
	doc, err := openapi3.NewLoader().LoadFromData(r.body)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("not a valid OpenAPI 3 document: %v", err)
	}
	return doc
}

// TestOpenAPIDocumentSaysWhatTheServerDoes: OpenAPI 3, one path per
// resource, every route, a bearer scheme with the public calls marked,
// what the server requires required and nothing more.
func TestOpenAPIDocumentSaysWhatTheServerDoes(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	doc := loadDoc(t, s)
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q, want 3.x", doc.OpenAPI)
	}
	for path, methods := range map[string][]string{
		"/api/v1/users":                 {"GET", "POST"},
		"/api/v1/users/{id}":            {"GET", "PATCH", "DELETE"},
		"/api/v1/users:batchGet":        {"GET"},
		"/api/v1/orders":                {"GET", "POST"},
		"/api/v1/orders/{id}":           {"GET"},
		"/api/v1/orders/{id}:cancel":    {"POST"},
		"/api/v1/users/{userId}/orders": {"GET"},
		"/api/v1/users/{id}:overview":   {"GET"},
		"/api/v1/auth:signIn":           {"POST"},
		"/api/v1/auth:refresh":          {"POST"},
		"/api/v1/auth:signOut":          {"POST"},
	} {
		item := doc.Paths.Value(path)
		if item == nil {
			t.Errorf("no path %s", path)
			continue
		}
		for _, m := range methods {
			op := item.GetOperation(m)
			if op == nil {
				t.Errorf("no %s %s", m, path)
				continue
			}
			for _, code := range []string{"400", "401", "429", "503"} {
				if op.Responses.Value(code) == nil {
					t.Errorf("%s %s does not document %s", m, path, code)
				}
			}
		}
	}
	if doc.Paths.Value("/api/v1/users/{user.id}") != nil {
		t.Error("PATCH still has its own path /api/v1/users/{user.id}")
	}
	if s := doc.Components.SecuritySchemes["bearer"]; s == nil || s.Value.Scheme != "bearer" {
		t.Errorf("no bearer security scheme: %v", doc.Components.SecuritySchemes)
	}
	if sec := doc.Paths.Value("/api/v1/auth:signIn").Post.Security; sec == nil || len(*sec) != 1 || len((*sec)[0]) != 0 {
		t.Errorf("sign-in is not marked public: %v", sec)
	}
	schemas := doc.Components.Schemas
	for name, want := range map[string][]string{
		"v1CreateUserRequest": {"email", "name", "password"},
		"v1UserPatch":         nil,
		"v1SignInRequest":     {"email", "password"},
	} {
		if got := schemas[name].Value.Required; strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s required %v, want %v", name, got, want)
		}
	}
	for _, p := range doc.Paths.Value("/api/v1/orders").Get.Parameters {
		if p.Value.Name == "userId" && !p.Value.Required {
			t.Error("GET /api/v1/orders: userId is required by the server, optional in the document")
		}
	}
	if !schemas["v1User"].Value.Properties["roles"].Value.ReadOnly {
		t.Error("roles is not read-only")
	}
}

// TestRealAnswersMatchTheDocument: real requests to every route — each
// success and the errors a client meets — and their real answers,
// validated against the document by kin-openapi's openapi3filter (a
// validator nobody here wrote): every status must be documented and
// every body must match its schema.
func TestRealAnswersMatchTheDocument(t *testing.T) {
	t.Parallel()
	s := startSystemWith(t, nil, func(c *app.Config) {
		// Exactly the sign-ups and sign-ins below, so the last is 429.
		c.Gateway.Limits = gateway.RateLimits{Auth: perMinute(10)}
	})
	doc := loadDoc(t, s)
	doc.Servers = openapi3.Servers{{URL: s.anon.base}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	email := "doc-" + uuid.NewString()[:8] + "@example.com"
	signUp := s.anon.do("POST", "/api/v1/users", mustJSON(map[string]string{"email": email, "name": "Doc", "password": "correct-horse"}))
	wantStatus(t, signUp, http.StatusCreated)
	uid := signUp.json(t)["user"].(map[string]any)["id"].(string)
	in := s.anon.do("POST", "/api/v1/auth:signIn", mustJSON(map[string]string{"email": email, "password": "correct-horse"})).json(t)
	tok, refresh := in["accessToken"].(string), in["refreshToken"].(string)
	me := client{t: t, base: s.anon.base, token: tok}
	order := me.do("POST", "/api/v1/orders", orderBody(uid, "doc-1")).json(t)["order"].(map[string]any)["id"].(string)
	missing := uuid.NewString()
	cases := []struct {
		c                  client
		method, path, body string
		want               int
		header             []string
	}{
		{s.anon, "POST", "/api/v1/users", `{"email":"x` + uuid.NewString()[:6] + `@example.com","name":"X","password":"correct-horse"}`, 201, nil},
		{s.anon, "POST", "/api/v1/users", `{"email":"nope"}`, 400, nil},
		{s.anon, "POST", "/api/v1/users", `{"email":"` + email + `","name":"X","password":"correct-horse"}`, 409, nil},
		{s.anon, "POST", "/api/v1/users", `not json`, 400, nil},
		{s.anon, "POST", "/api/v1/users", `{}`, 415, []string{"Content-Type", "text/plain"}},
		{s.anon, "POST", "/api/v1/users", `{"name":"` + strings.Repeat("x", 2<<20) + `"}`, 413, nil},
		{s.anon, "POST", "/api/v1/auth:signIn", `{"email":"` + email + `","password":"correct-horse"}`, 200, nil},
		{s.anon, "POST", "/api/v1/auth:signIn", `{"email":"` + email + `","password":"wrong-horse"}`, 401, nil},
		{s.anon, "POST", "/api/v1/auth:refresh", `{"refreshToken":"` + refresh + `"}`, 200, nil},
		{s.anon, "POST", "/api/v1/auth:refresh", `{"refreshToken":"` + refresh + `"}`, 401, nil},
		{s.anon, "POST", "/api/v1/auth:signOut", `{"refreshToken":"unknown"}`, 200, nil},
		{me, "GET", "/api/v1/users/" + uid, "", 200, nil},
		{s.anon, "GET", "/api/v1/users/" + uid, "", 401, nil},
		{me, "GET", "/api/v1/users/" + missing, "", 404, nil},
		{me, "GET", "/api/v1/users/not-a-uuid", "", 400, nil},
		{me, "GET", "/api/v1/users", "", 403, nil},
		{s.http, "GET", "/api/v1/users?pageSize=2", "", 200, nil},
		{me, "GET", "/api/v1/users:batchGet?ids=" + uid, "", 200, nil},
		{me, "PATCH", "/api/v1/users/" + uid, `{"name":"Renamed"}`, 200, nil},
		{me, "PATCH", "/api/v1/users/" + uid, `{"name":"Again"}`, 412, []string{"If-Match", `"v1"`}},
		{me, "PATCH", "/api/v1/users/" + uid + "?updateMask=name", `{"name":"Masked"}`, 200, nil},
		{me, "GET", "/api/v1/users/" + uid + ":overview", "", 200, nil},
		{me, "POST", "/api/v1/orders", orderBody(uid, "doc-2"), 201, nil},
		{me, "POST", "/api/v1/orders", orderBody(missing, "doc-3"), 404, nil},
		{me, "GET", "/api/v1/orders?userId=" + uid, "", 200, nil},
		{me, "GET", "/api/v1/users/" + uid + "/orders", "", 200, nil},
		{me, "GET", "/api/v1/orders/" + order, "", 200, nil},
		{me, "POST", "/api/v1/orders/" + order + ":cancel", `{}`, 200, nil},
		{me, "POST", "/api/v1/orders/" + order + ":cancel", `{}`, 400, nil},
		{me, "DELETE", "/api/v1/users/" + uid, "", 204, nil},
		{s.anon, "POST", "/api/v1/auth:signIn", `{"email":"` + email + `","password":"correct-horse"}`, 429, nil},
	}
	for _, tc := range cases {
		r := tc.c.do(tc.method, tc.path, tc.body, tc.header...)
		what := tc.method + " " + tc.path
		if r.code != tc.want {
			t.Errorf("%.100s: %d %s, want %d", what, r.code, r.body, tc.want)
			continue
		}
		req, _ := http.NewRequest(tc.method, s.anon.base+tc.path, strings.NewReader(tc.body))
		route, params, err := router.FindRoute(req)
		if err != nil {
			t.Errorf("%s: no route in the document: %v", what, err)
			continue
		}
		in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
		out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: r.code, Header: r.header,
			Body: io.NopCloser(bytes.NewReader(r.body)), Options: &openapi3filter.Options{IncludeResponseStatus: true}}
		if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
			t.Errorf("%.100s → %d: the answer does not match the document: %v", what, r.code, err)
		}
	}
}
