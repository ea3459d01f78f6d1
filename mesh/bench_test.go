package mesh_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/reflect/protoreflect"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
)

// benchTarget serves GetUser (a fixed answer) and returns a client of it,
// either bare grpc-go on both sides or the full mesh chain on both sides.
func benchTarget(tb testing.TB, withMesh bool) (userv1.UserServiceClient, func()) {
	fake := &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) { return okUser, nil }}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var conn *grpc.ClientConn
	var stop func()
	if withMesh {
		m, _ := testenv.Metrics()
		// JSON logs of every call are part of the chain's cost: format
		// them, write them nowhere.
		log := slog.New(slog.NewJSONHandler(io.Discard, nil))
		srv := mesh.NewServer(mesh.ServerConfig{}, log, m)
		srv.Register(&userv1.UserService_ServiceDesc, fake, validate)
		go srv.Serve(lis)
		conn, err = mesh.Dial(mesh.ClientConfig{Name: "user", Target: lis.Addr().String(),
			Services: []protoreflect.ServiceDescriptor{userv1.File_trellis_user_v1_user_proto.Services().Get(0)}}, log, m)
		stop = func() { srv.Shutdown(context.Background()) }
	} else {
		srv := grpc.NewServer()
		userv1.RegisterUserServiceServer(srv, fake)
		go srv.Serve(lis)
		conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		stop = srv.Stop
	}
	if err != nil {
		tb.Fatal(err)
	}
	return userv1.NewUserServiceClient(conn), func() { conn.Close(); stop() }
}

func benchGetUser(b *testing.B, withMesh bool) {
	c, stop := benchTarget(b, withMesh)
	defer stop()
	req := &userv1.GetUserRequest{Id: validID}
	if _, err := c.GetUser(context.Background(), req); err != nil { // connect outside the timer
		b.Fatal(err)
	}
	b.ReportAllocs()
	// 32 callers per core keep both sides busy, so ns/op measures the CPU
	// per call (throughput), not the round-trip latency of two callers.
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.GetUser(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkGetUser compares the same RPC through bare grpc-go and through
// the mesh server and client chains, in one run: the throughput ratio is
// bare ns/op divided by mesh ns/op.
func BenchmarkGetUser(b *testing.B) {
	b.Run("bare", func(b *testing.B) { benchGetUser(b, false) })
	b.Run("mesh", func(b *testing.B) { benchGetUser(b, true) })
}

// BenchmarkBreakerOpen measures what a call costs when the upstream's
// breaker is open: no network, an UNAVAILABLE made in process.
func BenchmarkBreakerOpen(b *testing.B) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens: every call fails until the breaker opens
	m, _ := testenv.Metrics()
	conn, err := mesh.Dial(mesh.ClientConfig{Name: "user", Target: addr, Breaker: mesh.BreakerConfig{Timeout: time.Hour}}, testenv.Logger(), m)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	c := userv1.NewUserServiceClient(conn)
	req := &userv1.GetUserRequest{Id: validID}
	for range 3 {
		_, _ = c.GetUser(context.Background(), req)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.GetUser(context.Background(), req); err == nil {
			b.Fatal("call succeeded with nothing listening")
		}
	}
}

// TestChainThroughputFloor is the regression gate CI runs (make
// bench-check): it alternates bare and mesh benchmark runs, five each,
// and fails when the median throughput ratio mesh/bare drops under the
// floor in bench/floors (0.85 by default). Alternating and taking the
// median keeps a noisy shared machine from deciding the result.
func TestChainThroughputFloor(t *testing.T) {
	if os.Getenv("TRELLIS_BENCH_FLOOR") == "" {
		t.Skip("set TRELLIS_BENCH_FLOOR=0.85 (make bench-check) to run the throughput gate")
	}
	var floor float64
	if _, err := fmt.Sscanf(os.Getenv("TRELLIS_BENCH_FLOOR"), "%g", &floor); err != nil {
		t.Fatalf("TRELLIS_BENCH_FLOOR: %v", err)
	}
	var ratios []float64
	var bareAllocs, meshAllocs int64
	for i := range 5 {
		bare := testing.Benchmark(func(b *testing.B) { benchGetUser(b, false) })
		withMesh := testing.Benchmark(func(b *testing.B) { benchGetUser(b, true) })
		r := float64(bare.NsPerOp()) / float64(withMesh.NsPerOp())
		ratios = append(ratios, r)
		bareAllocs, meshAllocs = bare.AllocsPerOp(), withMesh.AllocsPerOp()
		t.Logf("round %d: bare %d ns/op %d allocs/op, mesh %d ns/op %d allocs/op, ratio %.3f",
			i+1, bare.NsPerOp(), bare.AllocsPerOp(), withMesh.NsPerOp(), withMesh.AllocsPerOp(), r)
	}
	slices.Sort(ratios)
	median := ratios[len(ratios)/2]
	t.Logf("median throughput ratio mesh/bare = %.3f (floor %.2f); allocs/op bare %d, mesh %d", median, floor, bareAllocs, meshAllocs)
	// Allocations per call are steady where time is not: the chain may add
	// at most this many (measured: 43) before the gate fails.
	const maxExtraAllocs = 48
	if extra := meshAllocs - bareAllocs; extra > maxExtraAllocs {
		t.Errorf("mesh chain adds %d allocations per call, budget %d", extra, maxExtraAllocs)
	}
	if median < floor {
		t.Errorf("mesh chain throughput is %.3f of bare grpc-go, under the floor %.2f", median, floor)
	}
}
