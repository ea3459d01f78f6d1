package mesh_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
)

// TestSheddingKeepsTheHandlersUnderTheLimit: 200 calls at once against a
// server with a concurrency limit of at most 8 and a 10 ms queue: at most
// 8 run at a time, the rest are refused RESOURCE_EXHAUSTED with a retry
// delay (trailer and RetryInfo) without reaching validation or the
// handler; health is answered meanwhile; the same burst without shedding
// piles everything into the handlers.
func TestSheddingKeepsTheHandlersUnderTheLimit(t *testing.T) {
	t.Parallel()
	for _, on := range []bool{true, false} {
		var inflight, peak, handled atomic.Int32
		fake := &fakeUsers{getUser: func(ctx context.Context, _ *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
			n := inflight.Add(1)
			defer inflight.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			handled.Add(1)
			time.Sleep(50 * time.Millisecond)
			return okUser, nil
		}}
		m, _ := testenv.Metrics()
		srv := mesh.NewServer(mesh.ServerConfig{Name: "user", Shed: mesh.ShedConfig{Enabled: on, MinLimit: 4, MaxLimit: 8, MaxWait: 10 * time.Millisecond, Pushback: 100 * time.Millisecond}}, testenv.Logger(), m)
		srv.Register(&userv1.UserService_ServiceDesc, fake, validate)
		conn := testenv.Dial(t, testenv.Serve(t, srv))
		c := userv1.NewUserServiceClient(conn)
		var refused atomic.Int32
		var wg sync.WaitGroup
		for range 200 {
			wg.Go(func() {
				var trailer metadata.MD
				_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}, grpc.Trailer(&trailer))
				st := status.Convert(err)
				switch st.Code() {
				case codes.OK:
				case codes.ResourceExhausted:
					refused.Add(1)
					ms := trailer.Get("grpc-retry-pushback-ms")
					ri, ok := st.Details()[0].(*errdetails.RetryInfo)
					if len(ms) != 1 || !ok || ri.GetRetryDelay().AsDuration() < 50*time.Millisecond || ri.GetRetryDelay().AsDuration() > 150*time.Millisecond {
						t.Errorf("refusal without a 50-150 ms retry delay: trailer %v, details %v", ms, st.Details())
					}
				default:
					t.Errorf("call: %v", err)
				}
			})
		}
		// Health is never shed.
		hctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if _, err := healthpb.NewHealthClient(conn).Check(hctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Errorf("health during the burst: %v", err)
		}
		cancel()
		wg.Wait()
		t.Logf("shedding %v: peak %d in handlers, %d handled, %d refused", on, peak.Load(), handled.Load(), refused.Load())
		if on {
			if peak.Load() > 8 || refused.Load() == 0 || int(handled.Load()+refused.Load()) != 200 {
				t.Errorf("with shedding: peak %d (limit 8), %d refused", peak.Load(), refused.Load())
			}
			if got := testutil.ToFloat64(m.Refused("/trellis.user.v1.UserService/GetUser", "overload")); int32(got) != refused.Load() {
				t.Errorf("refused counter %v, want %d", got, refused.Load())
			}
		} else if peak.Load() <= 8 || refused.Load() != 0 {
			t.Errorf("without shedding: peak %d, %d refused; want everything in the handlers", peak.Load(), refused.Load())
		}
	}
}

// TestReadsHonourPushbackWritesDoNot: a read refused RESOURCE_EXHAUSTED
// with grpc-retry-pushback-ms is retried after that delay and succeeds; a
// write is not retried; neither opens the breaker.
func TestReadsHonourPushbackWritesDoNot(t *testing.T) {
	t.Parallel()
	shed := func(ctx context.Context) error {
		_ = grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", "300"))
		return status.Error(codes.ResourceExhausted, "overloaded")
	}
	var gets, creates atomic.Int32
	addr, _, _ := serve(t, &fakeUsers{
		getUser: func(ctx context.Context, _ *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
			if gets.Add(1) == 1 {
				return nil, shed(ctx)
			}
			return okUser, nil
		},
		createUser: func(ctx context.Context, _ *userv1.CreateUserRequest) (*userv1.CreateUserResponse, error) {
			creates.Add(1)
			return nil, shed(ctx)
		},
	}, mesh.ServerConfig{})
	c := dialMesh(t, addr, mesh.ClientConfig{Breaker: mesh.BreakerConfig{ConsecutiveFailures: 1, Timeout: time.Hour}})
	start := time.Now()
	if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}); err != nil {
		t.Fatalf("read after pushback: %v", err)
	}
	if waited := time.Since(start); gets.Load() != 2 || waited < 300*time.Millisecond {
		t.Errorf("read: %d attempts in %v, want 2 with the 300 ms pushback between", gets.Load(), waited)
	}
	for range 3 {
		_, err := c.CreateUser(context.Background(), &userv1.CreateUserRequest{Email: "a@example.com", Name: "A", Password: "correct-horse"})
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("write: %v, want RESOURCE_EXHAUSTED passed on (the breaker closed)", err)
		}
	}
	if creates.Load() != 3 {
		t.Errorf("%d write attempts for 3 calls: writes must not be retried", creates.Load())
	}
}
