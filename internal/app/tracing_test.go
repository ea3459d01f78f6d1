package app_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/app/apptest"
)

// TestTraceShapes checks the two traces the design promises, recorded in
// memory: browser request → gateway → order → user over gRPC, and
// user → outbox → NATS → the order service's consumer.
func TestTraceShapes(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	cfg := apptest.Config(t, app.TargetAll)
	cfg.Tracer = tp
	a := apptest.Start(t, cfg)
	base := "http://" + a.Addr(app.TargetGateway)
	admin := apptest.Admin(t, a)

	send := func(method, path, body, traceID string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
		req.Header.Set("Authorization", "Bearer "+admin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	r := send("POST", "/api/v1/users", `{"email":"trace@example.com","name":"T","password":"correct-horse"}`, "4bf92f3577b34da6a3ce929d0e0e4736")
	loc := r.Header.Get("Location")
	uid := loc[strings.LastIndexByte(loc, '/')+1:]
	orderTrace := "5bf92f3577b34da6a3ce929d0e0e4737"
	if r := send("POST", "/api/v1/orders", `{"userId":"`+uid+`","requestId":"tr-1","items":[{"productId":"p","quantity":1,"unitPrice":{"currencyCode":"EUR","amountMinor":"1"}}]}`, orderTrace); r.StatusCode != http.StatusCreated {
		t.Fatalf("create order: %d", r.StatusCode)
	}
	deleteTrace := "6bf92f3577b34da6a3ce929d0e0e4738"
	if r := send("DELETE", "/api/v1/users/"+uid, "", deleteTrace); r.StatusCode != http.StatusNoContent {
		t.Fatalf("delete user: %d", r.StatusCode)
	}

	find := func(traceID, name string, kind trace.SpanKind) sdktrace.ReadOnlySpan {
		for _, s := range rec.Ended() {
			if s.SpanContext().TraceID().String() == traceID && s.Name() == name && s.SpanKind() == kind {
				return s
			}
		}
		return nil
	}
	wait := func(traceID, name string, kind trace.SpanKind) sdktrace.ReadOnlySpan {
		deadline := time.Now().Add(10 * time.Second)
		for {
			if s := find(traceID, name, kind); s != nil {
				return s
			}
			if time.Now().After(deadline) {
				var have []string
				for _, s := range rec.Ended() {
					if s.SpanContext().TraceID().String() == traceID {
						have = append(have, s.SpanKind().String()+" "+s.Name())
					}
				}
				t.Fatalf("trace %s has no %s span %q; it has %v", traceID, kind, name, have)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	childOf := func(child, parent sdktrace.ReadOnlySpan) {
		t.Helper()
		if child.Parent().SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("%s %q: parent %s, want %s %q (%s)", child.SpanKind(), child.Name(), child.Parent().SpanID(),
				parent.SpanKind(), parent.Name(), parent.SpanContext().SpanID())
		}
	}

	// Browser → gateway → order → user.
	gw := wait(orderTrace, "POST /api/v1/orders", trace.SpanKindServer)
	if gw.Parent().SpanID().String() != "00f067aa0ba902b7" {
		t.Errorf("gateway span does not continue the browser's traceparent: parent %s", gw.Parent().SpanID())
	}
	gwCall := wait(orderTrace, "trellis.order.v1.OrderService/CreateOrder", trace.SpanKindClient)
	orderSrv := wait(orderTrace, "trellis.order.v1.OrderService/CreateOrder", trace.SpanKindServer)
	orderCall := wait(orderTrace, "trellis.user.v1.UserService/GetUser", trace.SpanKindClient)
	userSrv := wait(orderTrace, "trellis.user.v1.UserService/GetUser", trace.SpanKindServer)
	childOf(gwCall, gw)
	childOf(orderSrv, gwCall)
	childOf(orderCall, orderSrv)
	childOf(userSrv, orderCall)

	// user → outbox → NATS → order's consumer, in the trace of the delete.
	deleteSrv := wait(deleteTrace, "trellis.user.v1.UserService/DeleteUser", trace.SpanKindServer)
	consume := wait(deleteTrace, "trellis.user.v1.deleted process", trace.SpanKindConsumer)
	childOf(consume, deleteSrv)
}
