package app_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/app/apptest"
	"github.com/trellis-mesh/trellis/internal/sqldb"
	"github.com/trellis-mesh/trellis/mesh/token"
	"github.com/trellis-mesh/trellis/services/user"
)

// The callers of the matrix: who calls, with which token.
const (
	anonymous  = "anonymous"
	otherUser  = "other user"
	owner      = "owner"
	admin      = "admin"
	expired    = "expired token"
	unknownKey = "token signed by an unknown key"
	otherAud   = "token for another audience"
)

var callers = []string{anonymous, otherUser, owner, admin, expired, unknownKey, otherAud}

// matrix is a running system and the principals that call it.
type matrix struct {
	run        *apptest.Running
	users      userv1.UserServiceClient
	auth       userv1.AuthServiceClient
	orders     orderv1.OrderServiceClient
	base       string // the gateway
	adminToken string
	otherToken string
	key        user.SigningKey // the user service's signing key, to forge with
}

// fixture is what each cell acts on: an owner with a password and an
// order, fresh, so that a call that changes or deletes them changes
// nothing another cell sees.
type fixture struct {
	id, email, order string
	tokens           map[string]string // caller → bearer token ("" none)
}

func (m *matrix) fixture(t *testing.T) fixture {
	t.Helper()
	email := "owner-" + uuid.NewString()[:8] + "@example.com"
	id, tok := apptest.SignUp(t, m.run, email)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	o, err := m.orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: id, RequestId: uuid.NewString(),
		Items: []*orderv1.OrderItem{{ProductId: "book", Quantity: 1, UnitPrice: &orderv1.Money{CurrencyCode: "EUR", AmountMinor: 100}}}})
	if err != nil {
		t.Fatalf("owner's order: %v", err)
	}
	stranger, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	forge := func(key *ecdsa.PrivateKey, kid, aud string, iat, exp time.Time) string {
		s, err := token.Sign(key, kid, token.Claims{Claims: jwt.Claims{Issuer: token.DefaultIssuer, Subject: id, Audience: jwt.Audience{aud},
			IssuedAt: jwt.NewNumericDate(iat), Expiry: jwt.NewNumericDate(exp)}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return fixture{id: id, email: email, order: o.GetOrder().GetId(), tokens: map[string]string{
		anonymous: "", otherUser: m.otherToken, owner: tok, admin: m.adminToken,
		// The owner's own claims, each wrong in one way.
		expired:    forge(m.key.Key, m.key.KID, token.DefaultAudience, now.Add(-time.Hour), now.Add(-time.Minute)),
		unknownKey: forge(stranger, m.key.KID, token.DefaultAudience, now, now.Add(time.Hour)),
		otherAud:   forge(m.key.Key, m.key.KID, "someone-else", now, now.Add(time.Hour)),
	}}
}

func startMatrix(t *testing.T) *matrix {
	cfg := apptest.Config(t, app.TargetAll)
	run := apptest.Start(t, cfg)
	conn := run.Dial(t, app.TargetUser)
	m := &matrix{run: run, users: userv1.NewUserServiceClient(conn), auth: userv1.NewAuthServiceClient(conn),
		orders: orderv1.NewOrderServiceClient(run.Dial(t, app.TargetOrder)), base: "http://" + run.Addr(app.TargetGateway)}
	m.adminToken = apptest.Admin(t, run)
	_, m.otherToken = apptest.SignUp(t, run, "other-"+uuid.NewString()[:8]+"@example.com")
	// The signing key, read from the user service's database as only its
	// operator could: to forge tokens wrong in one way each.
	db, err := sqldb.Open(context.Background(), sqldb.Config{DataDir: cfg.DataDir, Name: "user"})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	store, err := user.NewSQLStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := store.SigningKeys(context.Background())
	if err != nil || len(keys) == 0 {
		t.Fatalf("signing keys: %v (%d)", err, len(keys))
	}
	m.key = keys[0]
	return m
}

// operation is one RPC and its REST route, called on a fixture.
type operation struct {
	name string
	grpc func(ctx context.Context, m *matrix, f fixture) error
	// method, path and body of the REST route (fmt with the fixture).
	rest func(f fixture) (method, path, body string)
	// want is the outcome per caller; callers not named are refused as
	// their token is (UNAUTHENTICATED).
	want map[string]codes.Code
}

// restAlways are REST routes that do not look at tokens: one outcome for
// every caller.
var restAlways = map[string]codes.Code{"GetJwks": codes.OK}

func TestAuthorizationMatrix(t *testing.T) {
	t.Parallel()
	m := startMatrix(t)
	public := map[string]codes.Code{anonymous: codes.OK, otherUser: codes.OK, owner: codes.OK, admin: codes.OK}
	mine := map[string]codes.Code{anonymous: codes.Unauthenticated, otherUser: codes.NotFound, owner: codes.OK, admin: codes.OK}
	ops := []operation{
		{"CreateUser", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.users.CreateUser(ctx, &userv1.CreateUserRequest{Email: "new-" + uuid.NewString()[:8] + "@example.com", Name: "New", Password: "correct-horse"})
			return err
		}, func(f fixture) (string, string, string) {
			return "POST", "/api/v1/users", `{"email":"new-` + uuid.NewString()[:8] + `@example.com","name":"New","password":"correct-horse"}`
		}, public},
		{"GetUser", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.users.GetUser(ctx, &userv1.GetUserRequest{Id: f.id})
			return err
		}, func(f fixture) (string, string, string) { return "GET", "/api/v1/users/" + f.id, "" }, mine},
		{"BatchGetUsers", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.users.BatchGetUsers(ctx, &userv1.BatchGetUsersRequest{Ids: []string{f.id}})
			return err
		}, func(f fixture) (string, string, string) { return "GET", "/api/v1/users:batchGet?ids=" + f.id, "" }, mine},
		{"ListUsers", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.users.ListUsers(ctx, &userv1.ListUsersRequest{})
			return err
		}, func(f fixture) (string, string, string) { return "GET", "/api/v1/users", "" },
			map[string]codes.Code{anonymous: codes.Unauthenticated, otherUser: codes.PermissionDenied, owner: codes.PermissionDenied, admin: codes.OK}},
		{"UpdateUser", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.users.UpdateUser(ctx, &userv1.UpdateUserRequest{User: &userv1.User{Id: f.id, Name: "Renamed"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}}})
			return err
		}, func(f fixture) (string, string, string) {
			return "PATCH", "/api/v1/users/" + f.id, `{"name":"Renamed"}`
		}, mine},
		{"DeleteUser", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.users.DeleteUser(ctx, &userv1.DeleteUserRequest{Id: f.id})
			return err
		}, func(f fixture) (string, string, string) { return "DELETE", "/api/v1/users/" + f.id, "" }, mine},
		{"CreateOrder", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: f.id, RequestId: uuid.NewString(),
				Items: []*orderv1.OrderItem{{ProductId: "p", Quantity: 1, UnitPrice: &orderv1.Money{CurrencyCode: "EUR", AmountMinor: 1}}}})
			return err
		}, func(f fixture) (string, string, string) {
			return "POST", "/api/v1/orders", `{"userId":"` + f.id + `","requestId":"` + uuid.NewString() + `","items":[{"productId":"p","quantity":1,"unitPrice":{"currencyCode":"EUR","amountMinor":"1"}}]}`
		}, mine},
		{"GetOrder", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.orders.GetOrder(ctx, &orderv1.GetOrderRequest{Id: f.order})
			return err
		}, func(f fixture) (string, string, string) { return "GET", "/api/v1/orders/" + f.order, "" }, mine},
		{"ListOrders", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.orders.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: f.id})
			return err
		}, func(f fixture) (string, string, string) { return "GET", "/api/v1/users/" + f.id + "/orders", "" }, mine},
		{"ListOrders (query)", nil, func(f fixture) (string, string, string) { return "GET", "/api/v1/orders?userId=" + f.id, "" }, mine},
		{"CancelOrder", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.orders.CancelOrder(ctx, &orderv1.CancelOrderRequest{Id: f.order})
			return err
		}, func(f fixture) (string, string, string) { return "POST", "/api/v1/orders/" + f.order + ":cancel", "{}" }, mine},
		{"overview", nil, func(f fixture) (string, string, string) { return "GET", "/api/v1/users/" + f.id + ":overview", "" }, mine},
		{"SignIn", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.auth.SignIn(ctx, &userv1.SignInRequest{Email: f.email, Password: apptest.Password})
			return err
		}, func(f fixture) (string, string, string) {
			return "POST", "/api/v1/auth:signIn", `{"email":"` + f.email + `","password":"` + apptest.Password + `"}`
		}, public},
		{"SignOut", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.auth.SignOut(ctx, &userv1.SignOutRequest{RefreshToken: "unknown"})
			return err
		}, func(f fixture) (string, string, string) {
			return "POST", "/api/v1/auth:signOut", `{"refreshToken":"unknown"}`
		}, public},
		{"GetJwks", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.auth.GetJwks(ctx, &userv1.GetJwksRequest{})
			return err
		}, func(f fixture) (string, string, string) { return "GET", "/.well-known/jwks.json", "" },
			// The key set is public and outside /api/: the gateway does not
			// look at a token there; the service still refuses a bad one.
			map[string]codes.Code{anonymous: codes.OK, otherUser: codes.OK, owner: codes.OK, admin: codes.OK}},
		{"RefreshToken (unknown token)", func(ctx context.Context, m *matrix, f fixture) error {
			_, err := m.auth.RefreshToken(ctx, &userv1.RefreshTokenRequest{RefreshToken: "unknown"})
			return err
		}, func(f fixture) (string, string, string) {
			return "POST", "/api/v1/auth:refresh", `{"refreshToken":"unknown"}`
		},
			map[string]codes.Code{anonymous: codes.Unauthenticated, otherUser: codes.Unauthenticated, owner: codes.Unauthenticated, admin: codes.Unauthenticated}},
	}
	for _, op := range ops {
		for _, who := range callers {
			want, ok := op.want[who]
			if !ok {
				want = codes.Unauthenticated // a bad token is refused, whatever the method
			}
			if op.grpc != nil {
				t.Run("gRPC/"+op.name+"/"+who, func(t *testing.T) {
					t.Parallel()
					f := m.fixture(t)
					ctx := context.Background()
					if tok := f.tokens[who]; tok != "" {
						ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
					}
					if got := status.Code(op.grpc(ctx, m, f)); got != want {
						t.Errorf("%s as %s: %v, want %v", op.name, who, got, want)
					}
				})
			}
			t.Run("REST/"+op.name+"/"+who, func(t *testing.T) {
				t.Parallel()
				f := m.fixture(t)
				method, path, body := op.rest(f)
				want := want
				if w, ok := restAlways[op.name]; ok {
					want = w
				}
				code, hdr, text := m.do(t, method, path, body, f.tokens[who])
				if !restMatches(code, want) {
					t.Errorf("%s %s as %s: %d %s, want %v", method, path, who, code, text, want)
				}
				if code == http.StatusUnauthorized && !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("%s %s as %s: 401 without WWW-Authenticate: Bearer", method, path, who)
				}
			})
		}
	}
}

// restMatches tells whether an HTTP status is the REST form of a code.
func restMatches(status int, want codes.Code) bool {
	switch want {
	case codes.OK:
		return status == http.StatusOK || status == http.StatusCreated || status == http.StatusNoContent
	case codes.Unauthenticated:
		return status == http.StatusUnauthorized
	case codes.PermissionDenied:
		return status == http.StatusForbidden
	case codes.NotFound:
		return status == http.StatusNotFound
	}
	return false
}

func (m *matrix) do(t *testing.T, method, path, body, tok string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, m.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// TestAnotherUsersObjectIsAnswerLikeAMissingOne: NOT_FOUND for another
// user's user or order says exactly what it says for an id that does not
// exist (no existence oracle).
func TestAnotherUsersObjectIsAnsweredLikeAMissingOne(t *testing.T) {
	t.Parallel()
	m := startMatrix(t)
	f := m.fixture(t)
	missing := uuid.NewString()
	for _, path := range []string{"/api/v1/users/%s", "/api/v1/orders/%s", "/api/v1/users/%s/orders"} {
		target := f.id
		if strings.HasPrefix(path, "/api/v1/orders/") {
			target = f.order
		}
		c1, _, b1 := m.do(t, "GET", fmt.Sprintf(path, target), "", m.otherToken)
		c2, _, b2 := m.do(t, "GET", fmt.Sprintf(path, missing), "", m.otherToken)
		if c1 != http.StatusNotFound || c2 != http.StatusNotFound || strings.ReplaceAll(b1, target, missing) != b2 {
			t.Errorf("%s: another's %d %s; missing %d %s", path, c1, b1, c2, b2)
		}
	}
}

// TestRefusalsTripNoBreaker: 401, 403 and 404 answers — through the
// gateway to both services, and the order service asking the user service
// with a token it refuses — are the callers' faults: no breaker opens.
func TestRefusalsTripNoBreaker(t *testing.T) {
	t.Parallel()
	m := startMatrix(t)
	f := m.fixture(t)
	for range 20 {
		for _, tok := range []string{"", f.tokens[expired], f.tokens[unknownKey], m.otherToken} {
			m.do(t, "GET", "/api/v1/users/"+f.id, "", tok)
			m.do(t, "GET", "/api/v1/orders/"+f.order, "", tok)
			m.do(t, "GET", "/api/v1/users", "", tok)
			m.do(t, "POST", "/api/v1/orders", `{"userId":"`+f.id+`","requestId":"`+uuid.NewString()+`","items":[{"productId":"p","quantity":1,"unitPrice":{"currencyCode":"EUR","amountMinor":"1"}}]}`, tok)
		}
	}
	families, err := m.run.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range families {
		if mf.GetName() != "trellis_breaker_transitions_total" {
			continue
		}
		found = true
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "to" && l.GetValue() == "open" && s.GetCounter().GetValue() > 0 {
					t.Errorf("a breaker opened on refusals: %v", s)
				}
			}
		}
	}
	if !found {
		t.Fatal("no trellis_breaker_transitions_total: the check would see nothing")
	}
	if code, _, _ := m.do(t, "GET", "/api/v1/users/"+f.id, "", f.tokens[owner]); code != http.StatusOK {
		t.Errorf("the owner after the refusals: %d", code)
	}
}
