package gateway

import (
	"net/http"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// cors answers browsers from the allowed origins. Requests without an
// Origin (curl, same-origin GETs) pass untouched; a preflight from an
// origin not on the list gets 403 and no CORS headers.
func (g *Gateway) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Add("Vary", "Origin")
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		allowed := slices.Contains(g.cfg.CORSOrigins, origin)
		switch {
		case allowed && preflight:
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Methods", "GET, POST, PATCH, DELETE")
			h.Set("Access-Control-Allow-Headers", "Content-Type, Authorization, If-Match, X-Request-Id, traceparent, tracestate")
			h.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
		case allowed:
			w.Header().Set("Access-Control-Allow-Origin", origin)
			w.Header().Set("Access-Control-Expose-Headers", "X-Request-Id, Location, ETag")
			next.ServeHTTP(w, r)
		case preflight:
			g.writeStatus(w, http.StatusForbidden, status.Newf(codes.PermissionDenied, "origin %s is not allowed", origin))
		default:
			next.ServeHTTP(w, r) // same-origin, or the browser will block the answer
		}
	})
}
