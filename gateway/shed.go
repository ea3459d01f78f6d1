package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
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
		if !ok {
			writeOverloaded(w, retry)
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

// overloadedMessage is the message of the gateway's own refusal.
const overloadedMessage = "the gateway is overloaded: retry after Retry-After"

// overloaded is the body of the gateway's own refusal: google.rpc.Status
// with one google.rpc.RetryInfo, as protojson writes it.
type overloaded struct {
	Code    int32        `json:"code"`
	Message string       `json:"message"`
	Details [1]retryInfo `json:"details"`
}

type retryInfo struct {
	Type       string          `json:"@type"`
	RetryDelay json.RawMessage `json:"retryDelay"`
}

// writeOverloaded answers the gateway's own refusal: 429, Retry-After, and
// RESOURCE_EXHAUSTED with RetryInfo — what writeError makes of that
// status, but encoded by encoding/json: protojson resolves the detail's
// Any and decodes it to encode it again, two thirds of what the shed
// middleware spent on a refusal (BenchmarkShedRefusal: 4.7 µs, now
// 1.65), and at 4x the knee three requests in four are refusals.
func writeOverloaded(w http.ResponseWriter, retry time.Duration) {
	delay, err := protojson.Marshal(durationpb.New(retry)) // "0.312s", as in any Duration
	if err != nil {
		delay = []byte(`"1s"`)
	}
	body, _ := json.Marshal(overloaded{Code: int32(codes.ResourceExhausted), Message: overloadedMessage,
		Details: [1]retryInfo{{Type: "type.googleapis.com/google.rpc.RetryInfo", RetryDelay: delay}}})
	setRetryAfter(w.Header(), retry)
	writeJSON(w, http.StatusTooManyRequests, body)
}
