package mesh

import (
	"context"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// RequestIDHeader is the metadata key (and, in the gateway, the HTTP header)
// that carries a request id across every hop.
const RequestIDHeader = "x-request-id"

type requestIDKey struct{}

// WithRequestID returns a context carrying id; outgoing mesh calls send it.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID returns the request id carried by ctx, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// maxRequestIDLen bounds a client-chosen id so it cannot bloat every log line.
const maxRequestIDLen = 128

// serverRequestID takes the caller's request id (or makes one), puts it in
// the context and echoes it back.
func serverRequestID(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	var id string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(RequestIDHeader); len(v) > 0 && len(v[0]) <= maxRequestIDLen {
			id = v[0]
		}
	}
	if id == "" {
		id = uuid.NewString()
	}
	resp, err := handler(WithRequestID(ctx, id), req)
	// On success the id rides in the response header. On failure it goes
	// in the trailer: a header frame before an error status would make the
	// client treat the call as committed and never retry it.
	if err == nil {
		_ = grpc.SetHeader(ctx, metadata.Pairs(RequestIDHeader, id))
	} else {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(RequestIDHeader, id))
	}
	return resp, err
}

// clientRequestID forwards the context's request id to the upstream.
func clientRequestID(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if id := RequestID(ctx); id != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, RequestIDHeader, id)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}
