package mesh

import (
	"context"
	"errors"
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

// errDefaultDeadline is the cause of the mesh's own default deadline, so the
// breaker can tell it from a caller's deadline (context.Cause).
var errDefaultDeadline = errors.New("mesh default deadline exceeded")

// defaultDeadline gives calls without a deadline the upstream's default one,
// with a cause that marks it as ours. Calls
// that carry a deadline (the caller's, or one propagated from an incoming
// call) keep it: gRPC sends it on as grpc-timeout.
func defaultDeadline(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok && d > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeoutCause(ctx, d, errDefaultDeadline)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}
