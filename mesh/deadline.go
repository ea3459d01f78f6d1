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

// defaultDeadline gives calls without a deadline the upstream's default one,
// and marks the context so the breaker knows the deadline was ours. (A
// context.Cause would not do: the upstream's copy of the deadline can fire
// and answer DEADLINE_EXCEEDED before ours does.) Calls
// that carry a deadline (the caller's, or one propagated from an incoming
// call) keep it: gRPC sends it on as grpc-timeout.
func defaultDeadline(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok && d > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(context.WithValue(ctx, defaultDeadlineKey{}, true), d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}
