package mesh

import (
	"context"
	"time"

	"google.golang.org/grpc"
)

// capDeadline bounds every call's work: no deadline, or one further away
// than max, becomes max. A client cannot pin a handler (and its upstream
// calls, which inherit the deadline) for longer.
func capDeadline(max time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > max {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, max)
			defer cancel()
		}
		return handler(ctx, req)
	}
}

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
