package gateway_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/app/apptest"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

// go-redis retries a failed dial from a goroutine that sleeps a second
// before seeing its closed pool (the rate-limit test with Redis away).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, append(testenv.LeakOptions(),
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))...)
}

// response is one HTTP answer, read whole.
type response struct {
	code   int
	header http.Header
	body   []byte
}

func (r response) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v\n%s", err, r.body)
	}
	return m
}

// violations lists the fields of the google.rpc.BadRequest detail.
func (r response) violations(t testing.TB) []string {
	t.Helper()
	var fields []string
	details, _ := r.json(t)["details"].([]any)
	for _, d := range details {
		fvs, _ := d.(map[string]any)["fieldViolations"].([]any)
		for _, fv := range fvs {
			fields = append(fields, fv.(map[string]any)["field"].(string))
		}
	}
	return fields
}

type client struct {
	t    testing.TB
	base string
	// token, when set, is sent as the bearer token of every request that
	// does not set its own Authorization.
	token string
}

func (c client) do(method, path, body string, header ...string) response {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return c.send(req)
}

func (c client) send(req *http.Request) response {
	c.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{code: resp.StatusCode, header: resp.Header, body: b}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func wantStatus(t testing.TB, r response, want int) {
	t.Helper()
	if r.code != want {
		t.Fatalf("status %d, want %d; body %s", r.code, want, r.body)
	}
}

// system runs user, order and gateway as separate components (separate
// App instances, as separate processes would), talking over loopback.
type system struct {
	user, order, gw *apptest.Running
	orderCfg        app.Config
	// http calls as an admin (these tests are about the REST facade; the
	// authorization rules have their matrix test), anon without a token.
	http, anon client
}

func startSystem(t testing.TB, tune func(gw *app.Config)) *system {
	t.Helper()
	return startSystemWith(t, nil, tune)
}

// startSystemWith is startSystem with the user service's configuration
// tuned too.
func startSystemWith(t testing.TB, tuneUser, tune func(*app.Config)) *system {
	t.Helper()
	s := &system{}
	userCfg := apptest.Config(t, app.TargetUser)
	if tuneUser != nil {
		tuneUser(&userCfg)
	}
	s.user = apptest.Start(t, userCfg)
	s.orderCfg = apptest.Config(t, app.TargetOrder)
	s.orderCfg.UserUpstream = s.user.Addr(app.TargetUser)
	s.order = apptest.Start(t, s.orderCfg)
	gw := apptest.Config(t, app.TargetGateway)
	gw.UserUpstream, gw.OrderUpstream = s.user.Addr(app.TargetUser), s.order.Addr(app.TargetOrder)
	gw.Upstream.Timeout = 2e9
	if tune != nil {
		tune(&gw)
	}
	s.gw = apptest.Start(t, gw)
	s.anon = client{t: t, base: "http://" + s.gw.Addr(app.TargetGateway)}
	s.http = s.anon
	s.http.token = apptest.Admin(t, s.user)
	return s
}

func (s *system) createUser(t testing.TB, email string) string {
	t.Helper()
	r := s.http.do("POST", "/api/v1/users", mustJSON(map[string]string{"email": email, "name": "Ada", "password": "correct-horse"}))
	wantStatus(t, r, http.StatusCreated)
	return r.json(t)["user"].(map[string]any)["id"].(string)
}

func orderBody(userID, requestID string) string {
	return mustJSON(map[string]any{"userId": userID, "requestId": requestID, "items": []any{
		map[string]any{"productId": "book", "quantity": 2, "unitPrice": map[string]any{"currencyCode": "EUR", "amountMinor": "1250"}},
	}})
}
