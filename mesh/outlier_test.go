package mesh_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
)

// replica is one of two fake user-service replicas whose CreateUser and
// GetUser answer with code (OK when codes.OK) and count their calls.
type replica struct {
	addr  string
	calls atomic.Int64
	code  atomic.Uint32
}

func newReplica(t *testing.T) *replica {
	r := &replica{}
	answer := func() error {
		r.calls.Add(1)
		if c := codes.Code(r.code.Load()); c != codes.OK {
			return status.Error(c, "replica says "+c.String())
		}
		return nil
	}
	r.addr, _, _ = serve(t, &fakeUsers{
		getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
			if err := answer(); err != nil {
				return nil, err
			}
			return okUser, nil
		},
		createUser: func(context.Context, *userv1.CreateUserRequest) (*userv1.CreateUserResponse, error) {
			if err := answer(); err != nil {
				return nil, err
			}
			return &userv1.CreateUserResponse{User: okUser.User}, nil
		},
	}, mesh.ServerConfig{})
	return r
}

// twoReplicas dials both replicas as one upstream with the outlier
// setting given; the registry holds the caller's breaker metrics.
func twoReplicas(t *testing.T, outlier mesh.OutlierConfig) (a, b *replica, c userv1.UserServiceClient, reg *prometheus.Registry) {
	a, b = newReplica(t), newReplica(t)
	m, reg := testenv.Metrics()
	conn, err := mesh.Dial(mesh.ClientConfig{Name: "user", Target: a.addr + "," + b.addr, Outlier: outlier,
		Services: []protoreflect.ServiceDescriptor{userv1.File_trellis_user_v1_user_proto.Services().Get(0)}}, slog.New(slog.DiscardHandler), m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c = userv1.NewUserServiceClient(conn)
	// Both connected before the test starts counting.
	for i := 0; a.calls.Load() == 0 || b.calls.Load() == 0; i++ {
		if i > 2000 {
			t.Fatal("the second replica never took a call")
		}
		_, _ = c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID})
	}
	return a, b, c, reg
}

// BaseEjection outlasts the measured calls even under -race on a busy machine
// (at 700 ms the replica came back mid-measurement and failed 4 calls).
var fastOutlier = mesh.OutlierConfig{FailurePercent: 50, Interval: 50 * time.Millisecond, BaseEjection: 3 * time.Second, MinRequests: 5}

// creates sends n CreateUser calls (writes: never retried, so a failure
// reaches the caller) and returns how many failed.
func creates(c userv1.UserServiceClient, n int) (failed int) {
	for range n {
		if _, err := c.CreateUser(context.Background(), &userv1.CreateUserRequest{Email: "a@example.com", Name: "A", Password: "correct-horse"}); err != nil {
			failed++
		}
		time.Sleep(2 * time.Millisecond)
	}
	return failed
}

func breakerOpen(t *testing.T, reg *prometheus.Registry) bool {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "trellis_breaker_state" {
			for _, m := range mf.GetMetric() {
				if m.GetGauge().GetValue() != 0 {
					return true
				}
			}
		}
	}
	return false
}

// TestOutlierEjectsTheFailingReplicaNotTheService: one replica of two
// answers UNAVAILABLE; within a few sweeps it is out of the rotation and
// the caller's calls succeed, the upstream's breaker never opens; once
// the replica is well it takes calls again. Without ejection (the control)
// half the calls keep failing.
func TestOutlierEjectsTheFailingReplicaNotTheService(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		outlier mesh.OutlierConfig
	}{{"ejection", fastOutlier}, {"control without ejection", mesh.OutlierConfig{}}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, _, c, reg := twoReplicas(t, tc.outlier)
			a.code.Store(uint32(codes.Unavailable))
			// The sweeps see the faults and eject: warm up until ten calls
			// in a row succeed (a busy machine delays the sweep's timer; CI
			// once needed more than the 60 calls this used to allow), at
			// most 3 s. The control never gets there.
			warm := creates(c, 20)
			for run, start := 0, time.Now(); run < 10 && time.Since(start) < 3*time.Second; {
				if creates(c, 1) == 0 {
					run++
				} else {
					warm, run = warm+1, 0
				}
			}
			failed := creates(c, 100)
			if tc.outlier.FailurePercent == 0 {
				if failed < 30 {
					t.Errorf("control: %d of 100 calls failed with one replica of two down; the test cannot tell ejection from luck", failed)
				}
				return
			}
			if failed > 2 {
				t.Errorf("after ejection %d of 100 calls failed (%d while ejecting)", failed, warm)
			}
			if breakerOpen(t, reg) {
				t.Error("the breaker opened on a service with one healthy replica")
			}
			// Well again: back in the rotation after its ejection time.
			a.code.Store(uint32(codes.OK))
			time.Sleep(fastOutlier.BaseEjection + 200*time.Millisecond)
			before := a.calls.Load()
			if f := creates(c, 40); f > 0 {
				t.Errorf("%d calls failed after the replica recovered", f)
			}
			if a.calls.Load()-before < 10 {
				t.Errorf("the recovered replica took %d of 40 calls; want it back in the rotation", a.calls.Load()-before)
			}
		})
	}
}

// TestOutlierIgnoresCallersMistakes: a replica that answers NOT_FOUND,
// INVALID_ARGUMENT or PERMISSION_DENIED to every call (a caller asking for
// what does not exist) is working, and stays in the rotation; gRPC's own
// policy, counting every non-OK status, would eject it.
func TestOutlierIgnoresCallersMistakes(t *testing.T) {
	t.Parallel()
	for _, code := range []codes.Code{codes.NotFound, codes.InvalidArgument, codes.PermissionDenied, codes.ResourceExhausted, codes.AlreadyExists} {
		t.Run(code.String(), func(t *testing.T) {
			t.Parallel()
			a, _, c, _ := twoReplicas(t, fastOutlier)
			a.code.Store(uint32(code))
			creates(c, 60)
			before := a.calls.Load()
			creates(c, 60)
			if got := a.calls.Load() - before; got < 20 {
				t.Errorf("a replica answering %v took %d of 60 calls: ejected for the caller's mistakes", code, got)
			}
		})
	}
}
