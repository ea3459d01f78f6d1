package gateway

import (
	"net/http"
	"runtime/debug"

	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/mesh"
)

// recoverPanics turns a panic into a 500 "internal error" and a log line
// with the stack.
func (g *Gateway) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				g.log.Error("panic in gateway", "request_id", mesh.RequestID(r.Context()), "panic", p, "stack", string(debug.Stack()))
				g.writeStatus(w, http.StatusInternalServerError, status.Convert(mesh.InternalError(r.Context())))
			}
		}()
		next.ServeHTTP(w, r)
	})
}
