package mesh

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync/atomic"

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

// idPrefix and idCounter make request ids for calls that arrive without
// one: unique per process start, and far cheaper than a random UUID per call.
var (
	idPrefix  = newIDPrefix()
	idCounter atomic.Uint64
)

func newIDPrefix() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b) + "-"
}

// NewRequestID returns a process-unique request id.
func NewRequestID() string {
	return idPrefix + strconv.FormatUint(idCounter.Add(1), 36)
}

// serverRequestID takes the caller's request id (or makes one) and puts it
// in the context. The caller chose the id or does not need it, so it is
// sent back only with a failure (in the trailer), where it is what a user
// quotes in a bug report. A trailer, not a header: a header frame before an
// error status would make the client treat the call as committed and never
// retry it.
func serverRequestID(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	var id string
	// ValueFromIncomingContext reads one key without copying all metadata.
	if v := metadata.ValueFromIncomingContext(ctx, RequestIDHeader); len(v) > 0 && len(v[0]) <= maxRequestIDLen {
		id = v[0]
	}
	if id == "" {
		id = NewRequestID()
	}
	resp, err := handler(WithRequestID(ctx, id), req)
	if err != nil {
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

// IfMatchHeader is the metadata key the gateway passes an HTTP If-Match
// header on as.
const IfMatchHeader = "if-match"

// Etag returns a request's etag precondition: the request's own etag
// field when set, else the If-Match the gateway passed on ("*" means no
// condition).
func Etag(ctx context.Context, field string) string {
	if field != "" {
		return field
	}
	if v := metadata.ValueFromIncomingContext(ctx, IfMatchHeader); len(v) > 0 && v[0] != "*" {
		return v[0]
	}
	return ""
}
