package gateway

import (
	"bytes"
	"io"
	"math"
	"net/http"
	"strconv"

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
			if err != nil {
				if bodyTooLarge(r) {
					g.writeStatus(w, http.StatusRequestEntityTooLarge, status.Newf(codes.InvalidArgument, "request body is larger than %d bytes", g.cfg.MaxBodyBytes))
				} else {
					g.writeStatus(w, http.StatusBadRequest, status.New(codes.InvalidArgument, "the request body could not be read"))
				}
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		release, retry, ok := l.Admit(r.Context(), "gateway:"+r.Method)
		if !ok {
			w.Header().Set("Retry-After", strconv.Itoa(max(int(math.Ceil(retry.Seconds())), 1)))
			st, _ := status.New(codes.ResourceExhausted, "the gateway is overloaded: retry after Retry-After").
				WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
			g.writeStatus(w, http.StatusTooManyRequests, st)
			return
		}
		defer release()
		next.ServeHTTP(w, r)
	})
}
