package gateway

import (
	"net/http"
	"strings"

	"github.com/trellis-mesh/trellis/mesh"
)

// RequestIDHeader is the HTTP header carrying the request id.
const RequestIDHeader = "X-Request-Id"

// headerPolicy is the deny-by-default header policy: besides
// Authorization (which grpc-gateway always forwards) and the request id
// (sent by the mesh client from the context), only W3C trace context
// and If-Match (the etag a change is conditional on) reach the services —
// trace context as it came when the gateway does not trace, or
// through the gateway's own spans when it does (the tracing client sends
// it; passing the raw header too would send it twice). Grpc-Metadata-*,
// X-User-Id and everything else a client sends stays at the edge.
func headerPolicy(tracing bool) func(string) (string, bool) {
	return func(key string) (string, bool) {
		switch k := strings.ToLower(key); k {
		case "traceparent", "tracestate":
			return k, !tracing
		case mesh.IfMatchHeader: // the etag precondition of a change
			return k, true
		}
		return "", false
	}
}

// validRequestID accepts client ids of up to 128 URL-safe characters;
// anything else is replaced, so ids are safe to log and to echo.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// withRequestID takes the client's X-Request-Id or makes one, echoes it in
// the response and puts it in the context, from where the mesh client
// sends it to every upstream.
func (g *Gateway) withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(RequestIDHeader)
		if !validRequestID(id) {
			id = mesh.NewRequestID() // a counter, not a random UUID: no syscall per request
		}
		w.Header().Set(RequestIDHeader, id)
		next.ServeHTTP(w, r.WithContext(mesh.WithRequestID(r.Context(), id)))
	})
}
