package mesh

import (
	"context"
	"sync"
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

// serviceTimes keeps, per method, a moving estimate of how long the
// handler takes: an exponentially weighted mean of the last calls'
// durations (about the last 20 weigh in).
type serviceTimes struct {
	mu  sync.Mutex
	est map[string]*serviceTime
}

type serviceTime struct {
	mean    time.Duration
	samples int
}

func (s *serviceTimes) observe(method string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.est[method]
	if st == nil {
		st = &serviceTime{mean: d}
		s.est[method] = st
	}
	st.mean += (d - st.mean) / 10
	st.samples++
}

// needs is the time method can be expected to take; false until it has
// been seen often enough to say.
func (s *serviceTimes) needs(method string) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.est[method]
	if st == nil || st.samples < minSamples {
		return 0, false
	}
	return st.mean, true
}

// minSamples is how many calls a method needs before its estimate is used.
const minSamples = 20

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
func deadlines(max time.Duration, times *serviceTimes, m *Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		dl, ok := ctx.Deadline()
		if !ok || time.Until(dl) > max {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, max)
			defer cancel()
			dl = time.Now().Add(max)
		}
		if need, ok := times.needs(info.FullMethod); ok && time.Until(dl) < need/2 {
			m.refused.WithLabelValues(info.FullMethod, "deadline").Inc()
			return nil, status.Errorf(codes.DeadlineExceeded, "refused: %s usually takes %s and the call's deadline is %s away",
				info.FullMethod, need.Round(time.Microsecond), time.Until(dl).Round(time.Microsecond))
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		times.observe(info.FullMethod, time.Since(start))
		return resp, err
	}
}
