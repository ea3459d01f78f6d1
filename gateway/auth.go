package gateway

import (
	"errors"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/mesh"
)

// Challenges of RFC 6750: a request without a token, and one whose token
// was refused.
const (
	challenge        = `Bearer realm="trellis"`
	challengeInvalid = `Bearer realm="trellis", error="invalid_token", error_description="the access token is invalid or expired"`
)

// authenticate checks the bearer token of an API request before anything
// else is done for it: an invalid one is 401 here, without reaching a
// service (which would check it again: a client that skips the gateway
// meets the same rules). A valid one makes the request the token's
// principal — for the rate limits and for calls the gateway makes itself
// (the overview) — and goes on to the services as it came. Requests
// without a token go on anonymous; the services decide what anonymous
// callers may do.
func (g *Gateway) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Values("Authorization")
		if len(h) == 0 || g.cfg.Tokens == nil {
			next.ServeHTTP(w, r)
			return
		}
		scheme, raw, ok := strings.Cut(h[0], " ")
		raw = strings.TrimSpace(raw)
		if len(h) > 1 || !ok || !strings.EqualFold(scheme, "bearer") || raw == "" {
			w.Header().Set("WWW-Authenticate", challengeInvalid)
			g.writeStatus(w, http.StatusUnauthorized, status.New(codes.Unauthenticated, `the Authorization header must be "Bearer <access token>"`))
			return
		}
		p, err := g.cfg.Tokens.Verify(r.Context(), raw)
		if errors.Is(err, mesh.ErrVerifierUnavailable) {
			g.log.WarnContext(r.Context(), "access token not verified", "request_id", mesh.RequestID(r.Context()), "reason", err.Error())
			w.Header().Set("Retry-After", "1")
			g.writeStatus(w, http.StatusServiceUnavailable, status.New(codes.Unavailable, "access tokens cannot be verified now: retry later"))
			return
		}
		if err != nil {
			g.log.InfoContext(r.Context(), "access token refused", "request_id", mesh.RequestID(r.Context()), "reason", err.Error())
			w.Header().Set("WWW-Authenticate", challengeInvalid)
			g.writeStatus(w, http.StatusUnauthorized, status.New(codes.Unauthenticated, "the access token is invalid or expired: sign in again"))
			return
		}
		next.ServeHTTP(w, r.WithContext(mesh.WithPrincipal(r.Context(), p, raw)))
	})
}

// jwks serves the user service's public keys at /.well-known/jwks.json,
// for anyone who verifies Trellis tokens.
func (g *Gateway) jwks(w http.ResponseWriter, r *http.Request) {
	resp, err := g.auth.GetJwks(r.Context(), &userv1.GetJwksRequest{})
	if err != nil {
		g.writeError(r.Context(), nil, nil, w, r, err)
		return
	}
	body, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(resp)
	if err != nil {
		g.writeError(r.Context(), nil, nil, w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	// Verifiers cache it; a rotated key is fetched when a token names it.
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(body)
}
