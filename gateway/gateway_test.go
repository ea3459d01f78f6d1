package gateway_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"

	"github.com/trellis-mesh/trellis/internal/app"
)

func TestUserRoutes(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	c := s.http

	created := c.do("POST", "/api/v1/users", `{"email":"ada@example.com","name":"Ada","password":"correct-horse"}`)
	wantStatus(t, created, http.StatusCreated)
	id := created.json(t)["user"].(map[string]any)["id"].(string)
	if loc := created.header.Get("Location"); loc != "/api/v1/users/"+id {
		t.Errorf("Location = %q, want /api/v1/users/%s", loc, id)
	}
	if strings.Contains(string(created.body), "password") || strings.Contains(string(created.body), "correct-horse") {
		t.Errorf("response mentions the password: %s", created.body)
	}
	other := s.createUser(t, "bob@example.com")

	tests := []struct {
		name, method, path, body string
		want                     int
		violations               []string
		contains                 string
	}{
		{"get", "GET", "/api/v1/users/" + id, "", 200, nil, `"email":"ada@example.com"`},
		{"get missing", "GET", "/api/v1/users/" + uuid.NewString(), "", 404, nil, "not found"},
		{"get bad id", "GET", "/api/v1/users/42", "", 400, []string{"id"}, ""},
		{"create duplicate email", "POST", "/api/v1/users", `{"email":"ADA@example.com","name":"A","password":"12345678"}`, 409, nil, "already exists"},
		{"create invalid", "POST", "/api/v1/users", `{"email":"nope","name":"","password":"short"}`, 400, []string{"email", "name", "password"}, ""},
		{"create unknown field", "POST", "/api/v1/users", `{"email":"c@example.com","name":"C","password":"12345678","admin":true}`, 400, nil, "unknown field"},
		{"create malformed json", "POST", "/api/v1/users", `{"email":`, 400, nil, "invalid JSON body"},
		{"create wrong type", "POST", "/api/v1/users", `{"email":5}`, 400, nil, "invalid JSON body"},
		{"create not JSON", "POST", "/api/v1/users", "\ufeff{}", 400, nil, "invalid JSON body: not JSON at byte 1"},
		{"list", "GET", "/api/v1/users?page_size=1", "", 200, nil, `"nextPageToken"`},
		{"list bad token", "GET", "/api/v1/users?page_token=xyz", "", 400, []string{"page_token"}, ""},
		{"list negative size", "GET", "/api/v1/users?page_size=-1", "", 400, []string{"page_size"}, ""},
		{"list non-numeric size", "GET", "/api/v1/users?page_size=ten", "", 400, nil, ""},
		{"batch get", "GET", "/api/v1/users:batchGet?ids=" + other + "&ids=" + id, "", 200, nil, `"bob@example.com"`},
		{"batch get missing", "GET", "/api/v1/users:batchGet?ids=" + uuid.NewString(), "", 404, nil, ""},
		{"patch name only", "PATCH", "/api/v1/users/" + id, `{"name":"Ada Lovelace"}`, 200, nil, `"name":"Ada Lovelace"`},
		{"patch read-only field", "PATCH", "/api/v1/users/" + id, `{"createTime":"2020-01-01T00:00:00Z"}`, 400, []string{"update_mask"}, ""},
		{"patch taken email", "PATCH", "/api/v1/users/" + id, `{"email":"bob@example.com"}`, 409, nil, ""},
		{"patch bad email", "PATCH", "/api/v1/users/" + id, `{"email":"bob"}`, 400, []string{"user.email"}, ""},
		{"patch missing user", "PATCH", "/api/v1/users/" + uuid.NewString(), `{"name":"X"}`, 404, nil, ""},
		{"no such route", "GET", "/api/v1/nothing", "", 404, nil, "no route"},
		{"method not allowed", "PUT", "/api/v1/users/" + id, `{}`, 405, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := c.do(tt.method, tt.path, tt.body)
			wantStatus(t, r, tt.want)
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			if tt.want >= 400 {
				m := r.json(t)
				if _, ok := m["code"].(float64); !ok || m["message"] == "" {
					t.Errorf("error body lacks code/message: %s", r.body)
				}
			}
			if tt.violations != nil {
				if diff := cmp.Diff(tt.violations, r.violations(t)); diff != "" {
					t.Errorf("violations (-want +got):\n%s", diff)
				}
			}
			if tt.contains != "" && !strings.Contains(strings.ReplaceAll(string(r.body), `", "`, `","`), tt.contains) {
				t.Errorf("body %s does not contain %s", r.body, tt.contains)
			}
		})
	}

	// The PATCH above changed only the name.
	got := c.do("GET", "/api/v1/users/"+id, "").json(t)["user"].(map[string]any)
	if got["name"] != "Ada Lovelace" || got["email"] != "ada@example.com" {
		t.Errorf("after patches: %v", got)
	}
	del := c.do("DELETE", "/api/v1/users/"+other, "")
	wantStatus(t, del, http.StatusNoContent)
	if len(del.body) != 0 {
		t.Errorf("204 with a body: %q", del.body)
	}
	wantStatus(t, c.do("DELETE", "/api/v1/users/"+other, ""), http.StatusNotFound)
}

func TestOrderRoutes(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	c := s.http
	uid := s.createUser(t, "buyer@example.com")

	created := c.do("POST", "/api/v1/orders", orderBody(uid, "r-1"))
	wantStatus(t, created, http.StatusCreated)
	order := created.json(t)["order"].(map[string]any)
	oid := order["id"].(string)
	if loc := created.header.Get("Location"); loc != "/api/v1/orders/"+oid {
		t.Errorf("Location = %q", loc)
	}
	if total := order["total"].(map[string]any); total["amountMinor"] != "2500" || order["status"] != "ORDER_STATUS_CONFIRMED" {
		t.Errorf("order = %v", order)
	}
	replay := c.do("POST", "/api/v1/orders", orderBody(uid, "r-1"))
	wantStatus(t, replay, http.StatusCreated)
	if replay.json(t)["order"].(map[string]any)["id"] != oid {
		t.Error("replayed request_id created another order")
	}

	tests := []struct {
		name, method, path, body string
		want                     int
		violations               []string
	}{
		{"get", "GET", "/api/v1/orders/" + oid, "", 200, nil},
		{"get missing", "GET", "/api/v1/orders/" + uuid.NewString(), "", 404, nil},
		{"list by query", "GET", "/api/v1/orders?user_id=" + uid + "&page_size=5", "", 200, nil},
		{"list nested", "GET", "/api/v1/users/" + uid + "/orders", "", 200, nil},
		{"list without user", "GET", "/api/v1/orders", "", 400, []string{"user_id"}},
		{"create for unknown user", "POST", "/api/v1/orders", orderBody(uuid.NewString(), "r-2"), 404, nil},
		{"create reused request id", "POST", "/api/v1/orders", strings.Replace(orderBody(uid, "r-1"), `"quantity":2`, `"quantity":3`, 1), 409, nil},
		{"create no items", "POST", "/api/v1/orders", `{"userId":"` + uid + `","requestId":"r-3","items":[]}`, 400, []string{"items"}},
		{"create bad item", "POST", "/api/v1/orders", `{"userId":"` + uid + `","requestId":"r-3","items":[{"productId":"x","quantity":0,"unitPrice":{"currencyCode":"EUR","amountMinor":"-1"}}]}`,
			400, []string{"items[0].quantity", "items[0].unit_price.amount_minor"}},
		{"cancel bad id", "POST", "/api/v1/orders/nope:cancel", "{}", 400, []string{"id"}},
		{"cancel missing", "POST", "/api/v1/orders/" + uuid.NewString() + ":cancel", "{}", 404, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := c.do(tt.method, tt.path, tt.body)
			wantStatus(t, r, tt.want)
			if tt.violations != nil {
				if diff := cmp.Diff(tt.violations, r.violations(t)); diff != "" {
					t.Errorf("violations (-want +got):\n%s", diff)
				}
			}
		})
	}

	cancelled := c.do("POST", "/api/v1/orders/"+oid+":cancel", "{}")
	wantStatus(t, cancelled, http.StatusOK)
	if st := cancelled.json(t)["order"].(map[string]any)["status"]; st != "ORDER_STATUS_CANCELLED" {
		t.Errorf("status after cancel = %v", st)
	}
	again := c.do("POST", "/api/v1/orders/"+oid+":cancel", "{}")
	wantStatus(t, again, http.StatusBadRequest) // FAILED_PRECONDITION
	if !strings.Contains(again.json(t)["message"].(string), "already cancelled") {
		t.Errorf("second cancel: %s", again.body)
	}
}

func TestUpstreamFailures(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	c := s.http
	uid := s.createUser(t, "u@example.com")
	wantStatus(t, c.do("POST", "/api/v1/orders", orderBody(uid, "before")), http.StatusCreated)
	admin := client{t: t, base: "http://" + s.gw.Addr("admin")}
	wantStatus(t, admin.do("GET", "/readyz", ""), http.StatusOK)

	s.order.Stop(t)
	r := c.do("POST", "/api/v1/orders", orderBody(uid, "during"))
	wantStatus(t, r, http.StatusServiceUnavailable)
	if msg := r.json(t)["message"].(string); strings.Contains(msg, "dial tcp") || strings.Contains(msg, "127.0.0.1") {
		t.Errorf("503 leaks connection details: %q", msg)
	}
	wantStatus(t, admin.do("GET", "/readyz", ""), http.StatusServiceUnavailable)

	// The overview still shows the user and says why orders are missing.
	ov := c.do("GET", "/api/v1/users/"+uid+":overview", "")
	wantStatus(t, ov, http.StatusOK)
	var body struct {
		User            map[string]any `json:"user"`
		RecentOrders    []any          `json:"recentOrders"`
		OrdersAvailable bool           `json:"ordersAvailable"`
		OrdersError     string         `json:"ordersError"`
	}
	if err := json.Unmarshal(ov.body, &body); err != nil {
		t.Fatal(err)
	}
	if body.User["id"] != uid || body.OrdersAvailable || body.OrdersError == "" || len(body.RecentOrders) != 0 {
		t.Errorf("degraded overview = %s", ov.body)
	}

	s.user.Stop(t)
	wantStatus(t, c.do("GET", "/api/v1/users/"+uid, ""), http.StatusServiceUnavailable)
	wantStatus(t, c.do("GET", "/api/v1/users/"+uid+":overview", ""), http.StatusServiceUnavailable)
}

func TestOverview(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	c := s.http
	uid := s.createUser(t, "o@example.com")
	for _, rid := range []string{"a", "b"} {
		wantStatus(t, c.do("POST", "/api/v1/orders", orderBody(uid, rid)), http.StatusCreated)
	}
	ov := c.do("GET", "/api/v1/users/"+uid+":overview", "")
	wantStatus(t, ov, http.StatusOK)
	m := ov.json(t)
	if m["ordersAvailable"] != true || len(m["recentOrders"].([]any)) != 2 || m["user"].(map[string]any)["id"] != uid {
		t.Errorf("overview = %s", ov.body)
	}
	wantStatus(t, c.do("GET", "/api/v1/users/"+uuid.NewString()+":overview", ""), http.StatusNotFound)
	wantStatus(t, c.do("GET", "/api/v1/users/bad:overview", ""), http.StatusBadRequest)
}

func TestBodyLimit(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	big := `{"email":"a@example.com","name":"` + strings.Repeat("x", 1<<20) + `","password":"12345678"}`
	r := s.http.do("POST", "/api/v1/users", big)
	wantStatus(t, r, http.StatusRequestEntityTooLarge)
	// Without Content-Length (chunked) the limit still holds.
	req, _ := http.NewRequest("POST", s.http.base+"/api/v1/users", struct{ *strings.Reader }{strings.NewReader(big)})
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/json")
	wantStatus(t, s.http.send(req), http.StatusRequestEntityTooLarge)
}

func TestCORS(t *testing.T) {
	t.Parallel()
	s := startSystem(t, func(c *app.Config) { c.Gateway.CORSOrigins = []string{"https://app.example.com"} })
	c := s.http
	pre := c.do("OPTIONS", "/api/v1/users", "", "Origin", "https://app.example.com", "Access-Control-Request-Method", "POST")
	wantStatus(t, pre, http.StatusNoContent)
	if pre.header.Get("Access-Control-Allow-Origin") != "https://app.example.com" || !strings.Contains(pre.header.Get("Access-Control-Allow-Methods"), "PATCH") {
		t.Errorf("allowed preflight headers: %v", pre.header)
	}
	denied := c.do("OPTIONS", "/api/v1/users", "", "Origin", "https://evil.example.com", "Access-Control-Request-Method", "POST")
	wantStatus(t, denied, http.StatusForbidden)
	if denied.header.Get("Access-Control-Allow-Origin") != "" {
		t.Error("denied origin got Access-Control-Allow-Origin")
	}
	get := c.do("GET", "/api/v1/users", "", "Origin", "https://app.example.com")
	if get.header.Get("Access-Control-Allow-Origin") != "https://app.example.com" || !strings.Contains(get.header.Get("Access-Control-Expose-Headers"), "X-Request-Id") {
		t.Errorf("allowed simple request headers: %v", get.header)
	}
	if h := c.do("GET", "/api/v1/users", "", "Origin", "https://evil.example.com").header.Get("Access-Control-Allow-Origin"); h != "" {
		t.Errorf("denied origin got Access-Control-Allow-Origin %q", h)
	}
}

func TestHealthMetricsAndRequestID(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	c := s.http
	h := c.do("GET", "/health", "")
	wantStatus(t, h, http.StatusOK)
	if strings.TrimSpace(string(h.body)) != "OK" {
		t.Errorf("/health body %q, want OK", h.body)
	}
	admin := client{t: t, base: "http://" + s.gw.Addr("admin")}
	wantStatus(t, admin.do("GET", "/healthz", ""), http.StatusOK)
	// The process registry and probes are on the admin address only.
	for _, p := range []string{"/metrics", "/healthz", "/readyz"} {
		wantStatus(t, c.do("GET", p, ""), http.StatusNotFound)
	}

	uid := s.createUser(t, "m@example.com")
	r := c.do("GET", "/api/v1/users/"+uid, "", "X-Request-Id", "trace-me-123")
	if r.header.Get("X-Request-Id") != "trace-me-123" {
		t.Errorf("client request id not echoed: %q", r.header.Get("X-Request-Id"))
	}
	if gen := c.do("GET", "/api/v1/users/"+uid, "", "X-Request-Id", "bad id with spaces").header.Get("X-Request-Id"); gen == "" || strings.Contains(gen, " ") {
		t.Errorf("invalid client id should be replaced, got %q", gen)
	}
	c.do("GET", "/api/v1/users/"+uuid.NewString(), "")
	m := string(admin.do("GET", "/metrics", "").body)
	for _, want := range []string{
		`http_requests_total{code="201",method="POST",route="/api/v1/users"} 1`,
		`http_requests_total{code="200",method="GET",route="/api/v1/users/{id}"} 2`,
		`http_requests_total{code="404",method="GET",route="/api/v1/users/{id}"} 1`,
		`http_request_duration_seconds_bucket{method="GET",route="/api/v1/users/{id}",le="+Inf"} 3`,
		`grpc_client_handled_total`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(m, uid) {
		t.Error("/metrics has a raw path (user id) in a label")
	}
}

func TestBrowserPageIsServed(t *testing.T) {
	t.Parallel()
	s := startSystem(t, nil)
	page := s.http.do("GET", "/", "")
	wantStatus(t, page, http.StatusOK)
	if !strings.Contains(string(page.body), "<title>Trellis</title>") || strings.Contains(string(page.body), "https://") {
		t.Errorf("page missing or loads from a CDN:\n%s", page.body)
	}
	wantStatus(t, s.http.do("GET", "/static/app.js", ""), http.StatusOK)
}
