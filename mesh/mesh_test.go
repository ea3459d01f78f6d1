package mesh_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/redisbreaker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeUsers is a UserService whose GetUser and CreateUser do what the test
// says.
type fakeUsers struct {
	userv1.UnimplementedUserServiceServer
	getUser    func(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error)
	createUser func(ctx context.Context, req *userv1.CreateUserRequest) (*userv1.CreateUserResponse, error)
}

func (f *fakeUsers) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	return f.getUser(ctx, req)
}

func (f *fakeUsers) CreateUser(ctx context.Context, req *userv1.CreateUserRequest) (*userv1.CreateUserResponse, error) {
	return f.createUser(ctx, req)
}

var okUser = &userv1.GetUserResponse{User: &userv1.User{Id: "0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90", Email: "a@example.com", Name: "A", CreateTime: timestamppb.Now()}}

const validID = "0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90"

// serve runs fake behind a mesh server and returns its address, the server
// and everything it logged.
func serve(t *testing.T, fake *fakeUsers, cfg mesh.ServerConfig) (string, *mesh.Server, *testenv.SyncBuffer) {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	m, _ := testenv.Metrics()
	srv := mesh.NewServer(cfg, slog.New(slog.NewJSONHandler(logs, nil)), m)
	srv.Register(&userv1.UserService_ServiceDesc, fake, validate)
	return testenv.Serve(t, srv), srv, logs
}

func TestPanicBecomesInternalWithStackOnlyInLog(t *testing.T) {
	t.Parallel()
	addr, _, logs := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		panic("secret-panic-detail")
	}}, mesh.ServerConfig{})
	c := userv1.NewUserServiceClient(testenv.Dial(t, addr))
	var trailer metadata.MD
	_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}, grpc.Trailer(&trailer))
	st := status.Convert(err)
	if st.Code() != codes.Internal {
		t.Fatalf("code = %v, want Internal", st.Code())
	}
	if strings.Contains(st.Message(), "secret") || strings.Contains(st.Message(), "goroutine") {
		t.Errorf("client sees panic details: %q", st.Message())
	}
	if id := trailer.Get(mesh.RequestIDHeader); len(id) != 1 || !strings.Contains(st.Message(), id[0]) {
		t.Errorf("message %q should quote the request id %v", st.Message(), id)
	}
	if l := logs.String(); !strings.Contains(l, "secret-panic-detail") || !strings.Contains(l, "goroutine") {
		t.Errorf("log lacks the panic and its stack:\n%s", l)
	}
}

func TestPlainErrorsNeverReachTheClient(t *testing.T) {
	t.Parallel()
	addr, _, logs := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		return nil, errors.New(`pq: relation "users" does not exist`)
	}}, mesh.ServerConfig{})
	c := userv1.NewUserServiceClient(testenv.Dial(t, addr))
	_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID})
	st := status.Convert(err)
	if st.Code() != codes.Internal || strings.Contains(st.Message(), "relation") {
		t.Errorf("got %v %q; want Internal without the SQL error", st.Code(), st.Message())
	}
	if !strings.Contains(logs.String(), `relation \"users\" does not exist`) {
		t.Errorf("the real error must be logged:\n%s", logs.String())
	}
}

func TestUnreachableBackingServiceIsUnavailable(t *testing.T) {
	t.Parallel()
	addr, _, _ := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		return nil, fmt.Errorf("get user: %w", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})
	}}, mesh.ServerConfig{})
	c := userv1.NewUserServiceClient(testenv.Dial(t, addr))
	_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID})
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || strings.Contains(st.Message(), "dial") || strings.Contains(st.Message(), "refused") {
		t.Errorf("got %v %q; want UNAVAILABLE without the dial error", st.Code(), st.Message())
	}
}

// serveRecorder serves a GetUser that answers okUser and records that it
// ran: tests of what must stop a request before the handler.
func serveRecorder(t *testing.T) (string, *atomic.Bool) {
	t.Helper()
	var called atomic.Bool
	addr, _, _ := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		called.Store(true)
		return okUser, nil
	}}, mesh.ServerConfig{})
	return addr, &called
}

func TestValidationRunsBeforeHandler(t *testing.T) {
	t.Parallel()
	addr, called := serveRecorder(t)
	c := userv1.NewUserServiceClient(testenv.Dial(t, addr))
	_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: "nope"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("code = %v, want InvalidArgument", status.Code(err))
	}
	if got := testenv.Violations(err); len(got) != 1 || got[0] != "id" {
		t.Errorf("violations = %v, want [id]", got)
	}
	if called.Load() {
		t.Error("handler ran for an invalid request")
	}
}

func TestRequestIDIsPropagatedLoggedAndReturnedOnFailure(t *testing.T) {
	t.Parallel()
	var seen atomic.Value
	addr, _, logs := serve(t, &fakeUsers{getUser: func(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		seen.Store(mesh.RequestID(ctx))
		if req.GetId() != validID {
			return nil, status.Error(codes.NotFound, "no such user")
		}
		return okUser, nil
	}}, mesh.ServerConfig{})
	c := userv1.NewUserServiceClient(testenv.Dial(t, addr))
	ctx := metadata.AppendToOutgoingContext(context.Background(), mesh.RequestIDHeader, "req-abc")
	if _, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: validID}); err != nil {
		t.Fatal(err)
	}
	if seen.Load() != "req-abc" {
		t.Errorf("handler saw request id %v, want req-abc", seen.Load())
	}
	if !strings.Contains(logs.String(), `"request_id":"req-abc"`) || !strings.Contains(logs.String(), `"grpc.code":"OK"`) {
		t.Errorf("log line lacks request id or code:\n%s", logs.String())
	}
	// Without an id the server makes one and returns it with the failure.
	var trailer metadata.MD
	_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: "0192f7a4-7c4e-7d1a-9b7e-000000000000"}, grpc.Trailer(&trailer))
	if status.Code(err) != codes.NotFound {
		t.Fatalf("got %v, want NotFound", err)
	}
	if got := trailer.Get(mesh.RequestIDHeader); len(got) != 1 || got[0] != seen.Load() {
		t.Errorf("trailer request id = %v, want the generated %v", got, seen.Load())
	}
}

func TestDeadlineIsCapped(t *testing.T) {
	t.Parallel()
	var budget atomic.Int64
	addr, _, _ := serve(t, &fakeUsers{getUser: func(ctx context.Context, _ *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		dl, _ := ctx.Deadline()
		budget.Store(int64(time.Until(dl)))
		return okUser, nil
	}}, mesh.ServerConfig{MaxDeadline: 2 * time.Second})
	c := userv1.NewUserServiceClient(testenv.Dial(t, addr))
	for _, callerTimeout := range []time.Duration{0, time.Hour} {
		ctx := context.Background()
		if callerTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, callerTimeout)
			defer cancel()
		}
		if _, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: validID}); err != nil {
			t.Fatal(err)
		}
		if b := time.Duration(budget.Load()); b <= 0 || b > 2*time.Second {
			t.Errorf("caller timeout %v: handler budget %v, want (0, 2s]", callerTimeout, b)
		}
	}
}

func TestHealthGoesNotServingOnShutdown(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	started := make(chan struct{})
	addr, srv, _ := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		close(started)
		<-release
		return okUser, nil
	}}, mesh.ServerConfig{DrainTimeout: 5 * time.Second})
	conn := testenv.Dial(t, addr)
	h := healthpb.NewHealthClient(conn)
	resp, err := h.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "trellis.user.v1.UserService"})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before shutdown: %v %v", resp, err)
	}
	// An in-flight call must finish during the drain.
	callErr := make(chan error, 1)
	go func() {
		_, err := userv1.NewUserServiceClient(conn).GetUser(context.Background(), &userv1.GetUserRequest{Id: validID})
		callErr <- err
	}()
	<-started
	stopped := make(chan struct{})
	go func() { srv.Shutdown(context.Background()); close(stopped) }()
	waitFor(t, func() bool { return !srv.Serving() })
	close(release)
	if err := <-callErr; err != nil {
		t.Errorf("in-flight call during drain: %v", err)
	}
	<-stopped
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestIsServerFault(t *testing.T) {
	t.Parallel()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"ok", context.Background(), nil, false},
		{"unavailable", context.Background(), status.Error(codes.Unavailable, ""), true},
		{"internal", context.Background(), status.Error(codes.Internal, ""), true},
		{"unknown", context.Background(), status.Error(codes.Unknown, ""), true},
		{"resource exhausted: a limit, or a server shedding load (alive)", context.Background(), status.Error(codes.ResourceExhausted, ""), false},
		{"invalid argument", context.Background(), status.Error(codes.InvalidArgument, ""), false},
		{"not found", context.Background(), status.Error(codes.NotFound, ""), false},
		{"already exists", context.Background(), status.Error(codes.AlreadyExists, ""), false},
		{"caller cancelled", cancelled, status.Error(codes.Canceled, ""), false},
		{"caller cancelled while upstream unavailable", cancelled, status.Error(codes.Unavailable, ""), false},
		{"caller's own deadline", context.Background(), status.Error(codes.DeadlineExceeded, ""), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mesh.IsServerFault(tt.ctx, tt.err); got != tt.want {
				t.Errorf("IsServerFault = %v, want %v", got, tt.want)
			}
		})
	}
}

// dialMesh returns a mesh client of addr with a fast breaker.
func dialMesh(t *testing.T, addr string, cfg mesh.ClientConfig) userv1.UserServiceClient {
	t.Helper()
	m, _ := testenv.Metrics()
	cfg.Name, cfg.Target = "user", addr
	cfg.Services = append(cfg.Services, userv1.File_trellis_user_v1_user_proto.Services().Get(0))
	conn, err := mesh.Dial(cfg, testenv.Logger(), m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return userv1.NewUserServiceClient(conn)
}

func TestReadsAreRetriedWritesAreNot(t *testing.T) {
	t.Parallel()
	var gets, creates atomic.Int32
	addr, _, _ := serve(t, &fakeUsers{
		getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
			if gets.Add(1) == 1 {
				return nil, status.Error(codes.Unavailable, "try again")
			}
			return okUser, nil
		},
		createUser: func(context.Context, *userv1.CreateUserRequest) (*userv1.CreateUserResponse, error) {
			creates.Add(1)
			return nil, status.Error(codes.Unavailable, "try again")
		},
	}, mesh.ServerConfig{})
	c := dialMesh(t, addr, mesh.ClientConfig{})
	if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}); err != nil {
		t.Fatalf("GetUser should succeed on retry: %v", err)
	}
	if n := gets.Load(); n != 2 {
		t.Errorf("GetUser attempts = %d, want 2", n)
	}
	_, err := c.CreateUser(context.Background(), &userv1.CreateUserRequest{Email: "a@example.com", Name: "A", Password: "12345678"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("CreateUser: %v", err)
	}
	if n := creates.Load(); n != 1 {
		t.Errorf("CreateUser attempts = %d, want 1 (writes are never retried)", n)
	}
}

func TestDefaultDeadlineAppliesAndTripsBreaker(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	addr, _, _ := serve(t, &fakeUsers{getUser: func(ctx context.Context, _ *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		calls.Add(1)
		<-ctx.Done()
		return nil, ctx.Err()
	}}, mesh.ServerConfig{})
	c := dialMesh(t, addr, mesh.ClientConfig{DefaultTimeout: 50 * time.Millisecond, Breaker: mesh.BreakerConfig{Timeout: time.Minute}})
	for range 3 {
		_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("slow upstream: got %v, want DeadlineExceeded", err)
		}
	}
	_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "circuit breaker open") {
		t.Fatalf("after 3 timeouts of the mesh's own deadline: got %v, want the open breaker", err)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("upstream saw %d calls, want 3 (the 4th is shed)", n)
	}
}

// TestAStallAmongSuccessesDoesNotTripButAHangDoes: an upstream that
// answers well and then, for a moment, stalls every call then in flight
// (a burst of timeouts in a row, as a loaded host makes them) keeps its
// breaker closed; one whose calls all time out opens it once timeouts are
// the majority of the window; refused calls still open it after three in
// a row (TestServerFaultsStillTripTheBreaker).
func TestAStallAmongSuccessesDoesNotTripButAHangDoes(t *testing.T) {
	t.Parallel()
	var stalled atomic.Bool
	addr, _, _ := serve(t, &fakeUsers{getUser: func(ctx context.Context, _ *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		if stalled.Load() {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return okUser, nil
	}}, mesh.ServerConfig{})
	c := dialMesh(t, addr, mesh.ClientConfig{DefaultTimeout: 50 * time.Millisecond, Breaker: mesh.BreakerConfig{Timeout: time.Minute}})
	call := func() error {
		_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID})
		return err
	}
	for range 60 {
		if err := call(); err != nil {
			t.Fatalf("healthy upstream: %v", err)
		}
	}
	// The stall: ten calls in flight together all run out of time.
	stalled.Store(true)
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if err := call(); status.Code(err) != codes.DeadlineExceeded {
				t.Errorf("stalled upstream: got %v, want DeadlineExceeded", err)
			}
		})
	}
	wg.Wait()
	stalled.Store(false)
	if err := call(); err != nil {
		t.Fatalf("after a stall of 10 timeouts among 60 successes the breaker must stay closed: %v", err)
	}
	// The hang: every call times out; the breaker opens once timeouts
	// reach half the window (61 successes: after about 61 timeouts).
	stalled.Store(true)
	var timedOut int
	for ; timedOut < 200; timedOut++ {
		err := call()
		if status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "circuit breaker open") {
			break
		}
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("hung upstream: got %v", err)
		}
	}
	// 10 + timedOut timeouts against 61 successes: open at the majority
	// and the three counted in a row it then needs — or sooner, if on a
	// slow machine the successes have left the 5 s window.
	if total := 10 + timedOut; timedOut == 200 || total > 61+3 {
		t.Fatalf("hung upstream: the breaker opened after %d timeouts; want by the time they reach the 61 successes (+3 in a row)", total)
	}
}

func TestUpstreamTimeoutShortensALongerCallerDeadline(t *testing.T) {
	t.Parallel()
	var budget atomic.Int64
	addr, _, _ := serve(t, &fakeUsers{getUser: func(ctx context.Context, _ *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		dl, _ := ctx.Deadline()
		budget.Store(int64(time.Until(dl)))
		return okUser, nil
	}}, mesh.ServerConfig{})
	c := dialMesh(t, addr, mesh.ClientConfig{DefaultTimeout: 200 * time.Millisecond})
	// The connection is made first: a first call's budget also pays for
	// the dial, which under -race on a busy machine took 60 ms (CI).
	if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}); err != nil {
		t.Fatal(err)
	}
	for _, caller := range []time.Duration{time.Minute, 100 * time.Millisecond} {
		ctx, cancel := context.WithTimeout(context.Background(), caller)
		_, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: validID})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		want := min(caller, 200*time.Millisecond)
		// The upper bound is the property (the shorter deadline wins); the
		// lower one only says the budget was not cut to nothing.
		if b := time.Duration(budget.Load()); b > want || b < want/2 {
			t.Errorf("caller deadline %v: upstream saw %v, want about %v", caller, b, want)
		}
	}
}

func TestCallerDeadlineAndCancelDoNotTripBreaker(t *testing.T) {
	t.Parallel()
	addr, _, _ := serve(t, &fakeUsers{getUser: func(ctx context.Context, _ *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
			return okUser, nil
		}
	}}, mesh.ServerConfig{})
	c := dialMesh(t, addr, mesh.ClientConfig{Breaker: mesh.BreakerConfig{Timeout: time.Minute}})
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: validID})
		cancel()
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("got %v, want DeadlineExceeded", err)
		}
	}
	if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}); err != nil {
		t.Errorf("breaker tripped on the caller's own deadlines: %v", err)
	}
}

// TestCommaListBalancesAndFailsOver: two replicas given as a list share
// the calls, and when one stops the other takes all of them.
func TestCommaListBalancesAndFailsOver(t *testing.T) {
	t.Parallel()
	var a, b atomic.Int32
	addrA, srvA, _ := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		a.Add(1)
		return okUser, nil
	}}, mesh.ServerConfig{})
	addrB, _, _ := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		b.Add(1)
		return okUser, nil
	}}, mesh.ServerConfig{})
	c := dialMesh(t, addrA+","+addrB, mesh.ClientConfig{})
	// round_robin sends as soon as one replica is connected; once both
	// are, calls alternate. Allow the second a moment to connect.
	for i := 0; i < 20 || (a.Load() == 0 || b.Load() == 0) && i < 2000; i++ {
		if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}); err != nil {
			t.Fatal(err)
		}
	}
	if a.Load() == 0 || b.Load() == 0 {
		t.Errorf("calls per replica: %d and %d; want both used", a.Load(), b.Load())
	}
	srvA.Shutdown(context.Background())
	before := b.Load()
	for range 10 {
		if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}); err != nil {
			t.Fatalf("with one replica stopped: %v", err)
		}
	}
	if b.Load()-before != 10 {
		t.Errorf("the remaining replica took %d of 10 calls", b.Load()-before)
	}
}

func TestServiceConfigRetriesOnlyReads(t *testing.T) {
	t.Parallel()
	sc, err := mesh.ServiceConfig(mesh.OutlierConfig{}, userv1.File_trellis_user_v1_user_proto.Services().Get(0))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"round_robin"`, `"method":"GetUser"`, `"method":"ListUsers"`, `"method":"BatchGetUsers"`, `"retryThrottling"`, `"UNAVAILABLE"`} {
		if !strings.Contains(sc, want) {
			t.Errorf("service config lacks %s: %s", want, sc)
		}
	}
	for _, write := range []string{"CreateUser", "UpdateUser", "DeleteUser"} {
		if strings.Contains(sc, write) {
			t.Errorf("service config retries the write %s: %s", write, sc)
		}
	}
}

// TestUnreachableSharedStateHoldsNoCall: the shared breaker state lives
// in a Redis that accepts connections and never answers (a partition
// behind a proxy, a hung server). Calls still take no longer than the
// state read's 50 ms bound, and the breaker opening — which writes the
// state — holds no call either. Before, go-redis ignored the 50 ms (it
// honours a context's deadline only when told to) and waited its 500 ms
// read timeout, and the write ran under the breaker's lock: chaos-cluster's
// Redis partition failed orders past the gateway's 1 s.
func TestUnreachableSharedStateHoldsNoCall(t *testing.T) {
	t.Parallel()
	hole := blackHole(t)
	var healthy atomic.Bool
	healthy.Store(true)
	addr, _, _ := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		if healthy.Load() {
			return okUser, nil
		}
		return nil, status.Error(codes.Internal, "boom")
	}}, mesh.ServerConfig{})
	shared, err := redisbreaker.New("redis://"+hole+"/0", "test-hole:", 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shared.Close() })
	c := dialMesh(t, addr, mesh.ClientConfig{Caller: "order", Shared: shared, SharedRefresh: 10 * time.Millisecond,
		Breaker: mesh.BreakerConfig{Timeout: time.Hour}})
	// Each call after a refresh interval reads the state: 50 ms at most,
	// 200 ms allowed for a busy machine (the read timeout was 500 ms).
	const bound = 200 * time.Millisecond
	timed := func(what string) error {
		start := time.Now()
		_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID})
		if d := time.Since(start); d > bound {
			t.Errorf("%s took %v with the shared state unreachable; want under %v", what, d, bound)
		}
		return err
	}
	for i := range 5 {
		time.Sleep(15 * time.Millisecond)
		if err := timed(fmt.Sprint("healthy call ", i)); err != nil {
			t.Fatalf("healthy call %d: %v", i, err)
		}
	}
	healthy.Store(false)
	for i := range 3 { // the third opens the breaker and publishes it
		if err := timed(fmt.Sprint("failing call ", i)); status.Code(err) != codes.Internal {
			t.Fatalf("failing call %d: %v", i, err)
		}
	}
	if err := timed("call to the open breaker"); !strings.Contains(fmt.Sprint(err), "circuit breaker open") {
		t.Fatalf("after 3 failures: %v; want the breaker open", err)
	}
}

// blackHole listens on loopback, accepts connections and never reads or
// answers; the test's cleanup closes them.
func blackHole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestSharedBreakerOpensEveryReplica: two replicas of a caller share their
// breaker through the machine's Redis; when one opens, the other stops
// calling the upstream too, and both recover after the open period.
func TestSharedBreakerOpensEveryReplica(t *testing.T) {
	t.Parallel()
	redisURL := os.Getenv("TRELLIS_TEST_REDIS_URL")
	if redisURL == "" {
		redisURL = "redis://127.0.0.1:6379/0"
	}
	prefix := "test-" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	var calls atomic.Int32
	var healthy atomic.Bool
	addr, _, _ := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		calls.Add(1)
		if healthy.Load() {
			return okUser, nil
		}
		return nil, status.Error(codes.Internal, "boom")
	}}, mesh.ServerConfig{})
	replica := func() userv1.UserServiceClient {
		shared, err := redisbreaker.New(redisURL, prefix, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { shared.Close() })
		return dialMesh(t, addr, mesh.ClientConfig{Caller: "order", Shared: shared, SharedRefresh: 20 * time.Millisecond,
			Breaker: mesh.BreakerConfig{Timeout: time.Second}})
	}
	a, b := replica(), replica()
	get := func(c userv1.UserServiceClient) error {
		_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID})
		return err
	}
	if err := get(b); status.Code(err) != codes.Internal {
		t.Fatalf("replica b before: %v (is Redis running at %s?)", err, redisURL)
	}
	for range 3 {
		_ = get(a)
	}
	if err := get(a); !strings.Contains(fmt.Sprint(err), "circuit breaker open") {
		t.Fatalf("replica a after 3 failures: %v", err)
	}
	// a writes its open state from a goroutine of its own: wait until
	// Redis holds it (a loaded CI machine can take longer than b's
	// refresh interval), then for b's next refresh.
	probe, err := redisbreaker.New(redisURL, prefix, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	for start := time.Now(); ; time.Sleep(5 * time.Millisecond) {
		if until, err := probe.OpenUntil(context.Background(), "order:user"); err == nil && !until.IsZero() {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("replica a's open state never reached Redis")
		}
	}
	time.Sleep(50 * time.Millisecond) // b's next refresh sees a's open state
	before := calls.Load()
	err = get(b)
	if !strings.Contains(fmt.Sprint(err), "opened by another replica") {
		t.Fatalf("replica b while a's breaker is open: %v", err)
	}
	if calls.Load() != before {
		t.Error("replica b reached the upstream while the shared breaker was open")
	}
	healthy.Store(true)
	time.Sleep(1100 * time.Millisecond) // the open period ends for both
	for _, c := range []userv1.UserServiceClient{a, a, a, b} {
		if err := get(c); err != nil {
			t.Fatalf("after the open period: %v", err)
		}
	}
}

func TestTracedCallsLogTraceAndSpanIDs(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	addr, _, logs := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		return okUser, nil
	}}, mesh.ServerConfig{Tracer: tp})
	c := userv1.NewUserServiceClient(testenv.Dial(t, addr))
	if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}); err != nil {
		t.Fatal(err)
	}
	// The server ends its span after the response is on its way: the
	// client can have it first (CI once looked too early).
	spans := rec.Ended()
	for start := time.Now(); len(spans) == 0 && time.Since(start) < 2*time.Second; spans = rec.Ended() {
		time.Sleep(5 * time.Millisecond)
	}
	if len(spans) != 1 {
		t.Fatalf("%d spans, want the server span", len(spans))
	}
	sc := spans[0].SpanContext()
	for _, want := range []string{`"trace_id":"` + sc.TraceID().String() + `"`, `"span_id":"` + sc.SpanID().String() + `"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log line lacks %s:\n%s", want, logs.String())
		}
	}
}

// The process logger batches INFO lines (one write per batch, not per
// call) but lets no warning wait, and loses nothing it was given by stop.
func TestBufferedLoggerBatchesInfoAndFlushesWarnings(t *testing.T) {
	out := &testenv.SyncBuffer{}
	log, stop, err := mesh.NewBufferedLogger(out, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("first call")
	if got := out.String(); got != "" {
		t.Fatalf("an INFO line was written at once: %q", got)
	}
	log.With("component", "order").Warn("breaker open")
	got := out.String()
	if !strings.Contains(got, "first call") || !strings.Contains(got, "breaker open") {
		t.Fatalf("a WARN line must flush itself and what came before it; written: %q", got)
	}
	log.Info("second call")
	deadline := time.Now().Add(2 * time.Second)
	for !strings.Contains(out.String(), "second call") {
		if time.Now().After(deadline) {
			t.Fatal("a buffered INFO line was not flushed within 2 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	log.Info("last call")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "last call") {
		t.Fatal("stop did not flush the buffer")
	}
}
