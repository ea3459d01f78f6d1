package gateway_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/gateway"
	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
)

// fakeUsers answers GetUser as the test says and remembers the metadata
// of the last call.
type fakeUsers struct {
	userv1.UnimplementedUserServiceServer
	getUser func(ctx context.Context) (*userv1.GetUserResponse, error)

	mu sync.Mutex
	md metadata.MD
}

func (f *fakeUsers) GetUser(ctx context.Context, _ *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.md = md
	f.mu.Unlock()
	return f.getUser(ctx)
}

func (f *fakeUsers) lastMD() metadata.MD {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.md
}

// fakeGateway serves the gateway over a plain grpc-go server running fake
// (no mesh server chain, so the gateway's own hygiene is what is tested).
func fakeGateway(t *testing.T, fake *fakeUsers, upstreamTimeout time.Duration) client {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	userv1.RegisterUserServiceServer(srv, fake)
	orderv1.RegisterOrderServiceServer(srv, orderv1.UnimplementedOrderServiceServer{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	m, reg := testenv.Metrics()
	conn, err := mesh.Dial(mesh.ClientConfig{Name: "user", Target: lis.Addr().String(), DefaultTimeout: upstreamTimeout}, testenv.Logger(), m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	gw, err := gateway.New(gateway.Config{}, conn, conn, testenv.Logger(), reg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(gw)
	t.Cleanup(hs.Close)
	return client{t: t, base: hs.URL}
}

var someUser = &userv1.GetUserResponse{User: &userv1.User{Id: "0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90", Email: "a@example.com"}}

func TestOnlyAllowedHeadersReachServices(t *testing.T) {
	t.Parallel()
	fake := &fakeUsers{getUser: func(context.Context) (*userv1.GetUserResponse, error) { return someUser, nil }}
	c := fakeGateway(t, fake, time.Second)
	r := c.do("GET", "/api/v1/users/0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90", "",
		"Authorization", "Bearer t0ken",
		"Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"Tracestate", "vendor=1",
		"X-Request-Id", "rid-1",
		"X-User-Id", "admin",
		"Grpc-Metadata-X-User-Id", "admin",
		"Grpc-Metadata-Authorization", "Bearer forged",
		"Cookie", "session=1",
		"X-Internal-Debug", "1",
	)
	wantStatus(t, r, http.StatusOK)
	md := fake.lastMD()
	for key, want := range map[string]string{"authorization": "Bearer t0ken", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "vendor=1", "x-request-id": "rid-1"} {
		if got := md.Get(key); len(got) != 1 || got[0] != want {
			t.Errorf("metadata %s = %v, want [%s]", key, got, want)
		}
	}
	for _, key := range []string{"x-user-id", "grpc-metadata-x-user-id", "cookie", "x-internal-debug", "grpcgateway-cookie", "grpcgateway-x-user-id"} {
		if got := md.Get(key); len(got) > 0 {
			t.Errorf("client header reached the service as %s=%v", key, got)
		}
	}
	for key := range md {
		if strings.Contains(key, "user-id") {
			t.Errorf("spoofed user id reached the service under %q", key)
		}
	}
}

func TestInternalErrorsAreHidden(t *testing.T) {
	t.Parallel()
	fake := &fakeUsers{getUser: func(context.Context) (*userv1.GetUserResponse, error) {
		return nil, status.Error(codes.Internal, `pq: relation "users" does not exist`)
	}}
	c := fakeGateway(t, fake, time.Second)
	r := c.do("GET", "/api/v1/users/0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90", "")
	wantStatus(t, r, http.StatusInternalServerError)
	msg := r.json(t)["message"].(string)
	if strings.Contains(msg, "relation") || !strings.HasPrefix(msg, "internal error") || !strings.Contains(msg, r.header.Get("X-Request-Id")) {
		t.Errorf("internal error message %q: want only 'internal error' and the request id", msg)
	}
}

func TestUpstreamDeadlineIs504(t *testing.T) {
	t.Parallel()
	fake := &fakeUsers{getUser: func(ctx context.Context) (*userv1.GetUserResponse, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	c := fakeGateway(t, fake, 50*time.Millisecond)
	r := c.do("GET", "/api/v1/users/0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90", "")
	wantStatus(t, r, http.StatusGatewayTimeout)
}
