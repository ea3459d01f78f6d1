package order_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/app/apptest"
	"github.com/trellis-mesh/trellis/internal/apperr"
	"github.com/trellis-mesh/trellis/internal/pagetoken"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/services/order"
)

type stack struct {
	user     *apptest.Running
	order    *apptest.Running
	users    userv1.UserServiceClient
	orders   orderv1.OrderServiceClient
	userCfg  app.Config
	orderCfg app.Config
}

// startStack runs the user and order services as separate components (the
// order service reaches the user service over loopback gRPC).
func startStack(t *testing.T, tune func(*app.Config)) *stack {
	t.Helper()
	s := &stack{userCfg: apptest.Config(t, app.TargetUser)}
	s.user = apptest.Start(t, s.userCfg)
	s.orderCfg = apptest.Config(t, app.TargetOrder)
	s.orderCfg.UserUpstream = s.user.Addr(app.TargetUser)
	if tune != nil {
		tune(&s.orderCfg)
	}
	s.order = apptest.Start(t, s.orderCfg)
	// These tests are about orders, not authorization (see the matrix
	// test): they call as an admin.
	admin := apptest.Admin(t, s.user)
	s.users = userv1.NewUserServiceClient(s.user.DialAs(t, app.TargetUser, admin))
	s.orders = orderv1.NewOrderServiceClient(s.order.DialAs(t, app.TargetOrder, admin))
	return s
}

func (s *stack) newUser(t *testing.T) string {
	t.Helper()
	resp, err := s.users.CreateUser(context.Background(), &userv1.CreateUserRequest{
		Email: uuid.NewString()[:8] + "@example.com", Name: "Buyer", Password: "correct-horse"})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetUser().GetId()
}

func item(product string, qty int32, price int64, currency string) *orderv1.OrderItem {
	return &orderv1.OrderItem{ProductId: product, Quantity: qty, UnitPrice: &orderv1.Money{CurrencyCode: currency, AmountMinor: price}}
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got code %v (%v), want %v", got, err, want)
	}
}

func TestCreateOrderComputesTotalAndIsIdempotent(t *testing.T) {
	t.Parallel()
	s := startStack(t, nil)
	ctx := context.Background()
	uid := s.newUser(t)
	req := &orderv1.CreateOrderRequest{UserId: uid, RequestId: "req-1",
		Items: []*orderv1.OrderItem{item("p1", 2, 1250, "EUR"), item("p2", 3, 99, "EUR")}}
	first, err := s.orders.CreateOrder(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	o := first.GetOrder()
	if o.GetTotal().GetAmountMinor() != 2*1250+3*99 || o.GetTotal().GetCurrencyCode() != "EUR" {
		t.Errorf("total = %v, want 2797 EUR", o.GetTotal())
	}
	if o.GetStatus() != orderv1.OrderStatus_ORDER_STATUS_CONFIRMED || o.GetUserId() != uid || len(o.GetItems()) != 2 {
		t.Errorf("order = %v", o)
	}
	again, err := s.orders.CreateOrder(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(o, again.GetOrder(), protocmp.Transform()); diff != "" {
		t.Errorf("retry with the same request_id returned another order (-first +retry):\n%s", diff)
	}
	changed := &orderv1.CreateOrderRequest{UserId: uid, RequestId: "req-1", Items: []*orderv1.OrderItem{item("p1", 1, 1250, "EUR")}}
	_, err = s.orders.CreateOrder(ctx, changed)
	wantCode(t, err, codes.AlreadyExists)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "different payload") {
		t.Errorf("reused request_id message %q does not say why", msg)
	}
}

func TestConcurrentRetriesCreateOneOrder(t *testing.T) {
	t.Parallel()
	s := startStack(t, nil)
	uid := s.newUser(t)
	req := &orderv1.CreateOrderRequest{UserId: uid, RequestId: "same", Items: []*orderv1.OrderItem{item("p", 1, 5, "USD")}}
	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Go(func() {
			resp, err := s.orders.CreateOrder(context.Background(), req)
			if err != nil {
				t.Errorf("attempt %d: %v", i, err)
				return
			}
			ids[i] = resp.GetOrder().GetId()
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("concurrent retries created different orders: %v", ids)
		}
	}
	list, err := s.orders.ListOrders(context.Background(), &orderv1.ListOrdersRequest{UserId: uid})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.GetOrders()); n != 1 {
		t.Errorf("user has %d orders, want 1", n)
	}
}

func TestCreateOrderInvalidInput(t *testing.T) {
	t.Parallel()
	s := startStack(t, nil)
	uid := s.newUser(t)
	many := make([]*orderv1.OrderItem, 101)
	for i := range many {
		many[i] = item("p", 1, 1, "EUR")
	}
	tests := []struct {
		name string
		req  *orderv1.CreateOrderRequest
		want []string
	}{
		{"empty", &orderv1.CreateOrderRequest{}, []string{"user_id", "request_id", "items"}},
		{"bad user id", &orderv1.CreateOrderRequest{UserId: "bob", RequestId: "r", Items: []*orderv1.OrderItem{item("p", 1, 1, "EUR")}}, []string{"user_id"}},
		{"too many items", &orderv1.CreateOrderRequest{UserId: uid, RequestId: "r", Items: many}, []string{"items"}},
		{"quantity 0 and 1001", &orderv1.CreateOrderRequest{UserId: uid, RequestId: "r",
			Items: []*orderv1.OrderItem{item("a", 0, 1, "EUR"), item("b", 1001, 1, "EUR")}}, []string{"items[0].quantity", "items[1].quantity"}},
		{"negative price", &orderv1.CreateOrderRequest{UserId: uid, RequestId: "r", Items: []*orderv1.OrderItem{item("a", 1, -1, "EUR")}},
			[]string{"items[0].unit_price.amount_minor"}},
		{"mixed currencies", &orderv1.CreateOrderRequest{UserId: uid, RequestId: "r",
			Items: []*orderv1.OrderItem{item("a", 1, 1, "EUR"), item("b", 1, 1, "USD")}}, []string{"items[1].unit_price.currency_code"}},
		{"bad currency, no product, no price", &orderv1.CreateOrderRequest{UserId: uid, RequestId: "r",
			Items: []*orderv1.OrderItem{item("a", 1, 1, "eur"), {Quantity: 1}}},
			[]string{"items[0].unit_price.currency_code", "items[1].product_id", "items[1].unit_price"}},
		{"not ISO 4217: ABC, XXX", &orderv1.CreateOrderRequest{UserId: uid, RequestId: "r",
			Items: []*orderv1.OrderItem{item("a", 1, 1, "ABC"), item("b", 1, 1, "XXX")}},
			[]string{"items[0].unit_price.currency_code", "items[1].unit_price.currency_code"}},
		{"NUL and bidi override in ids", &orderv1.CreateOrderRequest{UserId: uid, RequestId: "r\x00",
			Items: []*orderv1.OrderItem{item("a\u202eb", 1, 1, "EUR"), item("zero\u200bwidth", 1, 1, "EUR")}},
			[]string{"request_id", "items[0].product_id", "items[1].product_id"}},
		{"request id too long", &orderv1.CreateOrderRequest{UserId: uid, RequestId: strings.Repeat("r", 101), Items: []*orderv1.OrderItem{item("a", 1, 1, "EUR")}},
			[]string{"request_id"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.orders.CreateOrder(context.Background(), tt.req)
			wantCode(t, err, codes.InvalidArgument)
			if diff := cmp.Diff(tt.want, testenv.Violations(err)); diff != "" {
				t.Errorf("violations (-want +got):\n%s", diff)
			}
		})
	}
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"get: bad id":      func() error { _, err := s.orders.GetOrder(ctx, &orderv1.GetOrderRequest{Id: "1"}); return err },
		"cancel: empty id": func() error { _, err := s.orders.CancelOrder(ctx, &orderv1.CancelOrderRequest{}); return err },
		"list: no user":    func() error { _, err := s.orders.ListOrders(ctx, &orderv1.ListOrdersRequest{}); return err },
		"list: negative pg": func() error {
			_, err := s.orders.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: uid, PageSize: -5})
			return err
		},
	} {
		t.Run(name, func(t *testing.T) { wantCode(t, call(), codes.InvalidArgument) })
	}
}

func TestCreateOrderForUnknownUserIsNotFound(t *testing.T) {
	t.Parallel()
	s := startStack(t, nil)
	_, err := s.orders.CreateOrder(context.Background(), &orderv1.CreateOrderRequest{
		UserId: uuid.NewString(), RequestId: "r", Items: []*orderv1.OrderItem{item("a", 1, 1, "EUR")}})
	wantCode(t, err, codes.NotFound)
}

func TestCancelOrderLifecycle(t *testing.T) {
	t.Parallel()
	s := startStack(t, nil)
	ctx := context.Background()
	uid := s.newUser(t)
	created, err := s.orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: uid, RequestId: "r", Items: []*orderv1.OrderItem{item("a", 1, 1, "EUR")}})
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetOrder().GetId()
	resp, err := s.orders.CancelOrder(ctx, &orderv1.CancelOrderRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetOrder().GetStatus() != orderv1.OrderStatus_ORDER_STATUS_CANCELLED {
		t.Errorf("status after cancel = %v", resp.GetOrder().GetStatus())
	}
	got, err := s.orders.GetOrder(ctx, &orderv1.GetOrderRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetOrder().GetStatus() != orderv1.OrderStatus_ORDER_STATUS_CANCELLED {
		t.Errorf("stored status = %v", got.GetOrder().GetStatus())
	}
	_, err = s.orders.CancelOrder(ctx, &orderv1.CancelOrderRequest{Id: id})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = s.orders.CancelOrder(ctx, &orderv1.CancelOrderRequest{Id: uuid.NewString()})
	wantCode(t, err, codes.NotFound)
	_, err = s.orders.GetOrder(ctx, &orderv1.GetOrderRequest{Id: uuid.NewString()})
	wantCode(t, err, codes.NotFound)
}

func TestListOrdersPaginatesPerUser(t *testing.T) {
	t.Parallel()
	s := startStack(t, nil)
	ctx := context.Background()
	a, b := s.newUser(t), s.newUser(t)
	var want []string
	for i := range 3 {
		resp, err := s.orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: a, RequestId: fmt.Sprint("a", i), Items: []*orderv1.OrderItem{item("x", 1, 1, "EUR")}})
		if err != nil {
			t.Fatal(err)
		}
		want = append([]string{resp.GetOrder().GetId()}, want...)
	}
	first, err := s.orders.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: a, PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.orders.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: a, PageSize: 2, PageToken: first.GetNextPageToken()})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range append(first.GetOrders(), second.GetOrders()...) {
		got = append(got, o.GetId())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("orders newest first (-want +got):\n%s", diff)
	}
	if second.GetNextPageToken() != "" {
		t.Errorf("last page has a next token")
	}
	_, err = s.orders.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: b, PageToken: first.GetNextPageToken()})
	wantCode(t, err, codes.InvalidArgument)
}

// TestBreakerOpensAndRecovers stops the user service under the order
// service: calls fail UNAVAILABLE, the breaker opens after 3 failures and
// then answers without touching the network, half-opens after its timeout
// and closes once the user service is back.
func TestBreakerOpensAndRecovers(t *testing.T) {
	t.Parallel()
	const breakerTimeout = 700 * time.Millisecond
	s := startStack(t, func(c *app.Config) { c.Upstream.Breaker.Timeout = breakerTimeout })
	ctx := context.Background()
	uid := s.newUser(t)
	req := func(n int) *orderv1.CreateOrderRequest {
		return &orderv1.CreateOrderRequest{UserId: uid, RequestId: fmt.Sprint("r", n), Items: []*orderv1.OrderItem{item("x", 1, 1, "EUR")}}
	}
	// Users the order service's replica has never heard of: while the
	// user service is down nothing can vouch for them.
	unknown := func(n int) *orderv1.CreateOrderRequest {
		r := req(n)
		r.UserId = uuid.NewString()
		return r
	}
	if _, err := s.orders.CreateOrder(ctx, req(0)); err != nil {
		t.Fatal(err)
	}
	userAddr := s.user.Addr(app.TargetUser)
	s.user.Stop(t)

	reg := s.order.Registry()
	state := func() float64 { return gaugeValue(t, reg, "trellis_breaker_state") }
	for i := 1; i <= 3; i++ {
		start := time.Now()
		_, err := s.orders.CreateOrder(ctx, unknown(i))
		wantCode(t, err, codes.Unavailable)
		if !apperr.IsDependencyUnavailable(err) {
			t.Errorf("call %d: %v; want it marked DEPENDENCY_UNAVAILABLE (the order service is alive: its callers' breakers must not count it)", i, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("call %d with the user service down took %v; want a fast UNAVAILABLE", i, d)
		}
	}
	if got := state(); got != 2 {
		t.Fatalf("breaker state after 3 failures = %v, want 2 (open)", got)
	}
	_, err := s.orders.CreateOrder(ctx, unknown(4))
	wantCode(t, err, codes.Unavailable)
	if !apperr.IsDependencyUnavailable(err) {
		t.Errorf("with the breaker open: %v; want it marked DEPENDENCY_UNAVAILABLE", err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "upstream user") || !strings.Contains(msg, "circuit breaker open") {
		t.Errorf("open-breaker message %q should name the upstream and the breaker", msg)
	}
	if n := counterValue(t, reg, "trellis_breaker_rejected_total"); n < 1 {
		t.Errorf("rejected calls = %v, want >= 1", n)
	}

	// Bring the user service back on the same address and data.
	back := s.userCfg
	back.UserAddr = userAddr
	apptest.Start(t, back)
	deadline := time.Now().Add(breakerTimeout + 5*time.Second)
	for n := 5; ; n++ {
		// Orders for this (replica-known) user are accepted PENDING while
		// the breaker is open; CONFIRMED means the user service answered.
		resp, err := s.orders.CreateOrder(ctx, req(n))
		if err == nil && resp.GetOrder().GetStatus() == orderv1.OrderStatus_ORDER_STATUS_CONFIRMED {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("order service did not recover within %v of the user service returning", breakerTimeout+5*time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Half-open closes after MaxRequests (3) consecutive successes.
	for n := 100; n < 102; n++ {
		resp, err := s.orders.CreateOrder(ctx, req(n))
		if err != nil || resp.GetOrder().GetStatus() != orderv1.OrderStatus_ORDER_STATUS_CONFIRMED {
			t.Fatalf("call after recovery: %v %v", resp.GetOrder().GetStatus(), err)
		}
	}
	if got := state(); got != 0 {
		t.Errorf("breaker state after recovery = %v, want 0 (closed)", got)
	}
}

// TestClientErrorsDoNotTripBreaker: NOT_FOUND answers from the user service
// are the request's fault, not the upstream's.
func TestClientErrorsDoNotTripBreaker(t *testing.T) {
	t.Parallel()
	s := startStack(t, nil)
	for i := range 6 {
		_, err := s.orders.CreateOrder(context.Background(), &orderv1.CreateOrderRequest{
			UserId: uuid.NewString(), RequestId: fmt.Sprint("nf", i), Items: []*orderv1.OrderItem{item("x", 1, 1, "EUR")}})
		wantCode(t, err, codes.NotFound)
	}
	if got := gaugeValue(t, s.order.Registry(), "trellis_breaker_state"); got != 0 {
		t.Errorf("breaker state after NOT_FOUNDs = %v, want 0 (closed)", got)
	}
}

func gaugeValue(t *testing.T, reg interface {
	Gather() ([]*dto.MetricFamily, error)
}, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

var counterValue = gaugeValue

// TestIdempotencyKeysArePerUser: another user's reuse of a key is a new order,
// never a conflict that shows the first user's order id.
func TestIdempotencyKeysArePerUser(t *testing.T) {
	t.Parallel()
	s := startStack(t, nil)
	ctx := context.Background()
	alice, bob := s.newUser(t), s.newUser(t)
	a, err := s.orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: alice, RequestId: "k", Items: []*orderv1.OrderItem{item("a", 1, 100, "EUR")}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: bob, RequestId: "k", Items: []*orderv1.OrderItem{item("b", 2, 100, "EUR")}})
	if err != nil {
		t.Fatalf("bob reusing alice's key: %v", err)
	}
	if a.GetOrder().GetId() == b.GetOrder().GetId() || b.GetOrder().GetUserId() != bob {
		t.Errorf("bob got %v", b.GetOrder())
	}
	_, err = s.orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: bob, RequestId: "k", Items: []*orderv1.OrderItem{item("c", 1, 100, "EUR")}})
	wantCode(t, err, codes.AlreadyExists)
	if strings.Contains(err.Error(), a.GetOrder().GetId()) {
		t.Errorf("bob's conflict names alice's order: %v", err)
	}
}

// TestListPagesAreBoundedByBytes: a page of the largest orders the contract
// allows stops early with a next_page_token instead of growing past the
// message limit (which would be RESOURCE_EXHAUSTED and a tripped breaker
// at the gateway); following the tokens still returns every order once.
func TestListPagesAreBoundedByBytes(t *testing.T) {
	t.Parallel()
	s := startStack(t, nil)
	ctx := context.Background()
	uid := s.newUser(t)
	lines := make([]*orderv1.OrderItem, order.MaxItems)
	for i := range lines {
		lines[i] = item(strings.Repeat("p", order.MaxProductIDLen-3)+strconv.Itoa(100+i), 1, 1, "EUR")
	}
	const n = 40 // ~560 KB of orders
	for i := range n {
		if _, err := s.orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{UserId: uid, RequestId: strconv.Itoa(i), Items: lines}); err != nil {
			t.Fatal(err)
		}
	}
	seen, pages, token := map[string]bool{}, 0, ""
	for {
		resp, err := s.orders.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: uid, PageSize: order.MaxPage, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if size := proto.Size(resp); size > pagetoken.MaxPageBytes+16<<10 {
			t.Errorf("page %d is %d bytes, over the 256 KiB bound", pages, size)
		}
		for _, o := range resp.GetOrders() {
			if seen[o.GetId()] {
				t.Errorf("order %s on two pages", o.GetId())
			}
			seen[o.GetId()] = true
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(seen) != n || pages < 2 {
		t.Errorf("got %d orders in %d pages, want %d in at least 2", len(seen), pages, n)
	}
}
