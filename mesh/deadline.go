package mesh

import (
	"context"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type defaultDeadlineKey struct{}

// defaultDeadline bounds every upstream call by d: a call without a
// deadline gets one d away, and a propagated deadline further away than d
// is shortened to d, so one slow dependency cannot use up the caller's
// whole budget (the caller can still degrade or answer in time). A
// caller's deadline shorter than d is kept. The context is marked when the
// deadline is the mesh's own, so the breaker counts its expiry as the
// upstream's fault. (A context.Cause would not do: the upstream's copy of
// the deadline can fire and answer DEADLINE_EXCEEDED before ours does.)
func defaultDeadline(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if dl, ok := ctx.Deadline(); d > 0 && (!ok || time.Until(dl) > d) {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(context.WithValue(ctx, defaultDeadlineKey{}, true), d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// serviceTimes holds, per method registered with Server.Register, a
// moving estimate of how long its handler takes. Entries are added before
// the server serves (as validators are), so calls read the map without a
// lock, and each method's estimate is updated with atomics: no lock is
// taken on the call path.
type serviceTimes map[string]*serviceTime

// serviceTime is an exponentially weighted mean of the durations of a
// method's last completed calls (about the last 20 weigh in).
//
// It must not latch. Refused calls are not measured, so an estimate that
// refuses every call would never be corrected: in the cluster chaos suite
// a user replica whose calls stalled for ~10 s read "GetUser usually
// takes 2 s" and then refused every call with a deadline under a second
// for the rest of the run (so would one stopped by SIGSTOP, a VM pause or
// a stuck disk). So: a call that ended because its own deadline passed or
// its caller gave up measures the caller, not the method, and is not
// observed; one sample weighs in at most maxSampleRatio times the
// estimate, so a single slow call cannot make the method look slow; and an
// estimate no completed call has confirmed for estimateTTL is dropped, the
// next minSamples calls run and make a new one.
type serviceTime struct {
	mean    atomic.Int64 // nanoseconds
	samples atomic.Int64
	last    atomic.Int64 // unix ns of the last observed call
}

// Bounds of a method's estimate (serviceTime).
const (
	// minSamples is how many calls a method needs before its estimate is used.
	minSamples = 20
	// maxSampleRatio caps one sample at this many times the estimate.
	maxSampleRatio = 4
	// estimateTTL: an estimate no call has confirmed for this long is dropped.
	estimateTTL = time.Second
)

func (st *serviceTime) observe(d time.Duration, now time.Time) {
	st.last.Store(now.UnixNano())
	if st.samples.Add(1) == 1 {
		st.mean.Store(int64(d))
		return
	}
	for {
		old := st.mean.Load()
		sample := min(int64(d), maxSampleRatio*max(old, int64(time.Microsecond))) // never stuck at 0
		if st.mean.CompareAndSwap(old, old+(sample-old)/10) {
			return
		}
	}
}

// needs is the time the method can be expected to take; false until it
// has been seen often enough to say, and again once no call has confirmed
// it for estimateTTL.
func (st *serviceTime) needs(now time.Time) (time.Duration, bool) {
	if st.samples.Load() < minSamples {
		return 0, false
	}
	if now.UnixNano()-st.last.Load() > int64(estimateTTL) {
		st.samples.Store(0) // the next call starts a new estimate
		return 0, false
	}
	return time.Duration(st.mean.Load()), true
}

// deadlines bounds every call's work, then refuses the hopeless ones.
// Bound: no deadline, or one further away than max, becomes max, so a
// client cannot pin a handler (and its upstream calls, which inherit the
// deadline) for longer. Refuse: a call whose remaining deadline is shorter
// than half of what the method usually takes would be worked on —
// database and all — and thrown away when the deadline passes; it gets
// DEADLINE_EXCEEDED at once, as it would have later, with the estimate in
// the message so the caller can give more time. Half, not all: a call
// faster than usual still gets its chance. One interceptor for both: each
// link of the chain costs an allocation per call.
//
// Methods not registered through Server.Register (health, reflection) are
// only bounded, never refused.
func deadlines(max time.Duration, times serviceTimes, m *Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		dl, ok := ctx.Deadline()
		if !ok || time.Until(dl) > max {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, max)
			defer cancel()
			dl = time.Now().Add(max)
		}
		st := times[info.FullMethod]
		if st == nil {
			return handler(ctx, req)
		}
		start := time.Now()
		if need, ok := st.needs(start); ok && dl.Sub(start) < need/2 {
			m.refused.WithLabelValues(info.FullMethod, "deadline").Inc()
			return nil, status.Errorf(codes.DeadlineExceeded, "refused: %s usually takes %s and the call's deadline is %s away",
				info.FullMethod, need.Round(time.Microsecond), dl.Sub(start).Round(time.Microsecond))
		}
		resp, err := handler(ctx, req)
		if ctx.Err() == nil { // else it measured its deadline, not the method
			end := time.Now()
			st.observe(end.Sub(start), end)
		}
		return resp, err
	}
}
