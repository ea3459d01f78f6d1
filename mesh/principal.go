package mesh

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Principal is on whose behalf a call runs: an end user (or a machine
// client) proved by a verified access token, or — for the few workloads a
// server trusts to act as themselves (the order service's reconciler) — the
// calling workload proved by its mTLS certificate. The two never mix: a
// workload principal has Workload set and no Subject.
type Principal struct {
	// Subject is the token's sub: a Trellis user id, or a machine
	// client's id for tokens from an external provider.
	Subject string
	// Roles are the token's roles ("admin").
	Roles []string
	// Scopes are the token's scopes (machine clients of an external
	// provider).
	Scopes []string
	// Workload is the SPIFFE ID of a trusted workload acting as itself;
	// empty for end users.
	Workload string
	// token is the raw access token, forwarded on calls made for this
	// principal (ForwardToken).
	token string
}

// Admin reports whether the principal has the admin role.
func (p *Principal) Admin() bool { return p != nil && slices.Contains(p.Roles, "admin") }

// Is reports whether the principal is the end user with the given id.
func (p *Principal) Is(userID string) bool {
	return p != nil && p.Workload == "" && p.Subject != "" && p.Subject == userID
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p; token is the raw bearer token the
// principal came with ("" for workloads).
func WithPrincipal(ctx context.Context, p *Principal, token string) context.Context {
	if p != nil {
		cp := *p
		cp.token = token
		p = &cp
	}
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the call's principal, or nil for an anonymous
// caller.
func PrincipalFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// ForwardToken returns ctx whose outgoing calls carry the end user's
// access token, so that a service called on the user's behalf applies the
// user's rights, not the caller's. Without an end user, ctx is returned
// as it is: the call goes out with the workload's identity only.
func ForwardToken(ctx context.Context) context.Context {
	p := PrincipalFrom(ctx)
	if p == nil || p.token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+p.token)
}

// TokenVerifier checks an access token and returns its principal. Errors
// mean the token is not acceptable (expired, forged, another audience);
// their text is logged, never sent.
type TokenVerifier interface {
	Verify(ctx context.Context, token string) (*Principal, error)
}

// ErrVerifierUnavailable is wrapped by verification errors that are the
// verifier's fault, not the token's (the issuer's keys cannot be fetched):
// such calls are answered UNAVAILABLE, not UNAUTHENTICATED.
var ErrVerifierUnavailable = errors.New("access tokens cannot be verified now")

// Authentication configures end-user authentication of a server.
type Authentication struct {
	// Tokens verifies access tokens. Nil: no end-user authentication.
	Tokens TokenVerifier
	// Public lists the full method names an anonymous caller may call
	// (/pkg.Service/Method). Every other method registered through
	// Register needs a principal: UNAUTHENTICATED without one.
	Public []string
	// Workloads lists SPIFFE IDs trusted to call without a token, acting
	// as themselves (Principal.Workload); the use cases decide what such
	// a principal may do.
	Workloads []string
}

// Errors of authentication, the same text for every cause so that a
// client learns nothing about why its token was refused.
var (
	errNoToken      = status.Error(codes.Unauthenticated, "this method needs an access token: sign in and send it as \"authorization: Bearer <token>\"")
	errInvalidToken = status.Error(codes.Unauthenticated, "the access token is invalid or expired: sign in again")
	errVerifierDown = status.Error(codes.Unavailable, "access tokens cannot be verified now: retry later")
)

// authenticate is the end-user authentication link of the server chain,
// built on go-grpc-middleware's auth interceptor: a bearer token, when
// sent, must verify (else UNAUTHENTICATED, whatever the method); a call
// without one is anonymous, allowed only on public methods, unless it
// comes from a trusted workload. Methods not registered through Register
// (health, reflection) are left alone.
func authenticate(a Authentication, registered serviceTimes, log *slog.Logger) grpc.UnaryServerInterceptor {
	public := make(map[string]bool, len(a.Public))
	for _, m := range a.Public {
		public[m] = true
	}
	return auth.UnaryServerInterceptor(func(ctx context.Context) (context.Context, error) {
		method, _ := grpc.Method(ctx)
		if _, ok := registered[method]; !ok {
			return ctx, nil
		}
		if len(metadata.ValueFromIncomingContext(ctx, "authorization")) > 0 {
			raw, err := auth.AuthFromMD(ctx, "bearer")
			if err != nil {
				return nil, errInvalidToken
			}
			raw = strings.TrimSpace(raw)
			p, err := a.Tokens.Verify(ctx, raw)
			if errors.Is(err, ErrVerifierUnavailable) {
				log.WarnContext(ctx, "access token not verified", "grpc.method", method, "reason", err.Error(), "request_id", RequestID(ctx))
				return nil, errVerifierDown
			}
			if err != nil {
				log.InfoContext(ctx, "access token refused", "grpc.method", method, "reason", err.Error(), "request_id", RequestID(ctx))
				return nil, errInvalidToken
			}
			return WithPrincipal(ctx, p, raw), nil
		}
		if id := PeerID(ctx); id != "" && slices.Contains(a.Workloads, id) {
			return WithPrincipal(ctx, &Principal{Workload: id}, ""), nil
		}
		if public[method] {
			return ctx, nil
		}
		return nil, errNoToken
	})
}
