package gateway

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
	case st.Code() == codes.InvalidArgument && strings.HasPrefix(st.Message(), "invalid grpc-timeout:"):
		// grpc-gateway's, quoting the whole header back.
		st = status.New(codes.InvalidArgument, "Grpc-Timeout is not a gRPC timeout: digits and one unit, H, M, S, m (milliseconds), u or n, as in 250m")
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
	case st.Code() == codes.InvalidArgument && queryMistake(st.Message()) != "":
		// grpc-gateway's query parser on a parameter given twice
		// (pageSize=1&pageSize=2, or pageSize and page_size), or a dotted
		// name into a field that is not a message: `too many values for
		// field "page_size": 1, 2` quoted every value back.
		st = badParam(quotedName(st.Message()), queryMistake(st.Message()))
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
				setRetryAfter(w.Header(), ri.GetRetryDelay().AsDuration())
			}
		}
	case st.Code() == codes.DeadlineExceeded && g.clientDeadlineBinds(r):
		// The client asked for an answer within its Grpc-Timeout, and it
		// ran out (or was refused at once as too short for the method): the
		// client's choice, not the upstream's failure.
		httpStatus = http.StatusRequestTimeout
		d, _ := parseGRPCTimeout(r.Header.Get(grpcTimeoutHeader)) // the value as read, not the client's text: it may be 64 KiB of zeros
		msg := fmt.Sprintf("the request's own deadline (Grpc-Timeout, %s) ran out before an answer: send a longer one, or none", d)
		if g.cfg.UpstreamTimeout > 0 {
			msg += fmt.Sprintf(" (the gateway then waits up to %s per upstream call)", g.cfg.UpstreamTimeout)
		}
		if strings.HasPrefix(st.Message(), "refused:") { // the server's deadline-aware refusal says what it needs
			msg += "; " + st.Message()
		}
		st = status.New(codes.DeadlineExceeded, msg)
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
	// A message or detail may quote what the client sent, and protojson
	// refuses strings that are not UTF-8: the client's bytes are replaced
	// (U+FFFD), or the details dropped, rather than the answer becoming a 500.
	p := st.Proto()
	p.Message = clipMessage(strings.ToValidUTF8(p.Message, "\uFFFD"))
	body, err := errorJSON.Marshal(p)
	if err != nil {
		p.Details = nil
		body, err = errorJSON.Marshal(p)
	}
	if err != nil {
		body = []byte(`{"code":13,"message":"internal error"}`)
		httpStatus = http.StatusInternalServerError
	}
	writeJSON(w, httpStatus, body)
}

// writeJSON writes an error answer's status and JSON body.
func writeJSON(w http.ResponseWriter, httpStatus int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Del("Content-Length")
	w.WriteHeader(httpStatus)
	_, _ = w.Write(body)
}

// setRetryAfter says when to come back in whole seconds, at least 1.
func setRetryAfter(h http.Header, d time.Duration) {
	h.Set("Retry-After", strconv.Itoa(max(ceilSeconds(d), 1)))
}

// MaxErrorMessageBytes caps the message of an error answer. A message may
// quote what the client sent — protojson quotes a number it could not
// read, a route error the path — and a client that sent a 500 KB number
// got all of it back. Longer messages are cut at a character boundary and
// end in "…"; the field violations (details) name fields, not values.
const MaxErrorMessageBytes = 512

func clipMessage(m string) string {
	if len(m) <= MaxErrorMessageBytes {
		return m
	}
	cut := MaxErrorMessageBytes
	for cut > 0 && !utf8.RuneStart(m[cut]) {
		cut--
	}
	return m[:cut] + "…"
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

// queryMistake is what a client did wrong in a grpc-gateway query parse
// error that names a parameter (runtime.PopulateQueryParameters), or "".
func queryMistake(msg string) string {
	for _, m := range [...]struct{ prefix, desc string }{
		{"too many values for field ", "given more than once: send it once"},
		{"duplicate field ", "given more than once (its JSON and proto names are one parameter): send it once"},
		{"invalid path: ", "not a parameter: it has no fields to set with a dotted name"},
		{"field already set for oneof ", "only one of these parameters may be given"},
	} {
		if strings.HasPrefix(msg, m.prefix) {
			return m.desc
		}
	}
	return ""
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

// grpcTimeoutHeader is the deadline a REST client may set on its request,
// in gRPC's encoding (digits and a unit: 250m, 2S); grpc-gateway
// applies it to the upstream calls and refuses a malformed one (400).
const grpcTimeoutHeader = "Grpc-Timeout"

// clientDeadlineBinds reports whether the request set a deadline shorter
// than the gateway's own per-call one, so that a DEADLINE_EXCEEDED is the
// client's deadline running out.
func (g *Gateway) clientDeadlineBinds(r *http.Request) bool {
	d, ok := parseGRPCTimeout(r.Header.Get(grpcTimeoutHeader))
	return ok && d > 0 && (g.cfg.UpstreamTimeout <= 0 || d < g.cfg.UpstreamTimeout)
}

var grpcTimeoutUnits = map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}

// parseGRPCTimeout decodes a grpc-timeout value as grpc-gateway does:
// digits and one unit of H, M, S, m, u, n; too large a value saturates.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 {
		return 0, false
	}
	unit, ok := grpcTimeoutUnits[v[len(v)-1]]
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(v[:len(v)-1], 10, 64)
	if err != nil {
		return 0, false
	}
	if n > uint64(math.MaxInt64)/uint64(unit) {
		return math.MaxInt64, true
	}
	return time.Duration(n) * unit, true
}
