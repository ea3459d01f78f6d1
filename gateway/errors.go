package gateway

import (
	"context"
	"net/http"
	"strconv"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trellis-mesh/trellis/mesh"
)

// errorJSON renders a status as google.rpc.Status JSON: {"code": 3,
// "message": "...", "details": [...]}, the shape the OpenAPI document
// declares for every error response.
var errorJSON = protojson.MarshalOptions{}

// writeError is the one way errors leave the gateway. The HTTP status
// follows the gRPC code; internal faults say only "internal error" and the
// request id, and are logged with their real text.
func (g *Gateway) writeError(ctx context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	st := status.Convert(err)
	httpStatus := runtime.HTTPStatusFromCode(st.Code())
	switch {
	case st.Code() == codes.InvalidArgument && st.Message() == "unexpected EOF":
		st = status.New(codes.InvalidArgument, "invalid JSON body: unexpected end of input")
	case st.Code() == codes.InvalidArgument && strings.HasPrefix(st.Message(), "proto:"):
		// A body protojson could not decode: say so in words a client
		// can act on ("proto: (line 1:9): unknown field" is the parser's).
		st = status.New(codes.InvalidArgument, "invalid JSON body: "+strings.TrimSpace(strings.TrimPrefix(st.Message(), "proto:")))
	case st.Code() == codes.InvalidArgument && (strings.HasPrefix(st.Message(), "parsing field ") || strings.HasPrefix(st.Message(), "parsing list ")):
		// grpc-gateway's query parser: `parsing field "page_size":
		// strconv.ParseInt: parsing "x": invalid syntax`. Name the
		// parameter; keep Go's internals out.
		st = badParam(quotedName(st.Message()), "not a valid value for this parameter")
	case st.Code() == codes.InvalidArgument && strings.HasPrefix(st.Message(), "type mismatch, parameter: "):
		name, _, _ := strings.Cut(strings.TrimPrefix(st.Message(), "type mismatch, parameter: "), ",")
		st = badParam(name, "not a valid value for this path parameter")
	case st.Code() == codes.Unauthenticated:
		w.Header().Set("WWW-Authenticate", challenge)
		if mode := sessionFrom(ctx); mode != nil {
			setSessionCookie(w, "", mode.secure) // a refresh token refused is gone
		}
	case st.Code() == codes.ResourceExhausted:
		// A limit the caller went over (failed sign-ins of an account):
		// when to come back, in HTTP's words too.
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				w.Header().Set("Retry-After", strconv.Itoa(max(ceilSeconds(ri.GetRetryDelay().AsDuration()), 1)))
			}
		}
	case st.Code() == codes.Aborted:
		// The only ABORTED is a stale etag: the precondition failed.
		httpStatus = http.StatusPreconditionFailed
	case bodyTooLarge(r):
		st = status.Newf(codes.InvalidArgument, "request body is larger than %d bytes", g.cfg.MaxBodyBytes)
		httpStatus = http.StatusRequestEntityTooLarge
	case st.Code() == codes.Internal || st.Code() == codes.Unknown || st.Code() == codes.DataLoss:
		g.log.ErrorContext(ctx, "internal error", "request_id", mesh.RequestID(r.Context()),
			"method", r.Method, "path", r.URL.Path, "error", st.Message())
		st = status.Convert(mesh.InternalError(r.Context()))
		httpStatus = http.StatusInternalServerError
	}
	g.writeStatus(w, httpStatus, st)
}

func (g *Gateway) writeStatus(w http.ResponseWriter, httpStatus int, st *status.Status) {
	body, err := errorJSON.Marshal(st.Proto())
	if err != nil {
		body = []byte(`{"code":13,"message":"internal error"}`)
		httpStatus = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Del("Content-Length")
	w.WriteHeader(httpStatus)
	_, _ = w.Write(body)
}

// routingError answers requests no route matches, in the same shape.
func (g *Gateway) routingError(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
	switch httpStatus {
	case http.StatusMethodNotAllowed:
		g.writeStatus(w, httpStatus, status.Newf(codes.Unimplemented, "method %s not allowed on %s", r.Method, r.URL.Path))
	default:
		g.writeStatus(w, http.StatusNotFound, status.Newf(codes.NotFound, "no route for %s %s", r.Method, r.URL.Path))
	}
}

func (g *Gateway) notFound(w http.ResponseWriter, r *http.Request) {
	g.routingError(r.Context(), nil, nil, w, r, http.StatusNotFound)
}

// quotedName returns the first "quoted" word of msg (the field a
// grpc-gateway parse error names), or "query".
func quotedName(msg string) string {
	_, rest, ok := strings.Cut(msg, `"`)
	if !ok {
		return "query"
	}
	name, _, ok := strings.Cut(rest, `"`)
	if !ok || name == "" {
		return "query"
	}
	return name
}
