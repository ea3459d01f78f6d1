package gateway

import (
	"bytes"
	"io"
	"net/http"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// shed puts the adaptive concurrency limit (--shed-gateway) in front of
// the API: after the per-client rate limits (a limited client takes no
// slot) and after the body has been read, within the body limit (a client
// trickling its body holds no slot). Over the limit: 429 with Retry-After
// and a RESOURCE_EXHAUSTED body with RetryInfo. Shedding only behind the
// gateway is not enough: its few HTTP/2 connections to a service queue
// calls in their streams before the service's limit ever sees them.
func (g *Gateway) shed(next http.Handler) http.Handler {
	l := g.cfg.Shedder
	if l == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			b, err := io.ReadAll(r.Body)
			if err != nil { // writeError makes a body over the limit 413
				g.writeError(r.Context(), nil, nil, w, r, status.Error(codes.InvalidArgument, "the request body could not be read"))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		release, retry, ok := l.Admit(r.Context(), "gateway:"+r.Method)
		if !ok { // writeError: 429, Retry-After from the RetryInfo
			st, _ := status.New(codes.ResourceExhausted, "the gateway is overloaded: retry after Retry-After").
				WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
			g.writeError(r.Context(), nil, nil, w, r, st.Err())
			return
		}
		shed := false
		defer func() { release(shed) }()
		next.ServeHTTP(w, r)
		shed = statusOf(w) == http.StatusTooManyRequests // refused behind the gateway
	})
}

// statusOf is the status code written to w, read from the statusRecorder
// that measure puts around every request (reached through Unwrap); 0 when
// there is none.
func statusOf(w http.ResponseWriter) int {
	for {
		switch v := w.(type) {
		case *statusRecorder:
			return v.code
		case interface{ Unwrap() http.ResponseWriter }:
			w = v.Unwrap()
		default:
			return 0
		}
	}
}
