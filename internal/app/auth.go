package app

import (
	"time"

	"google.golang.org/grpc"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/identity"
	"github.com/trellis-mesh/trellis/mesh/token"
	"github.com/trellis-mesh/trellis/services/user"
)

// verifier is how a component checks access tokens: against the user
// service's keys directly when it runs in this process, else against the
// key set the user service publishes (AuthService.GetJwks over userConn,
// cached: fetched again only for a key it does not know, or after 5 min).
func (a *App) verifier(userConn grpc.ClientConnInterface) *token.Verifier {
	if a.tokenKeys == nil {
		keys := token.NewKeySet(user.FetchJWKS(userv1.NewAuthServiceClient(userConn)), time.Second, 5*time.Minute)
		// Fetched at start and kept fresh in the background: tokens verify
		// while the user service is down, with the keys last seen.
		a.workers = append(a.workers, keys.Run)
		a.tokenKeys = keys
	}
	if a.tokenCache == nil {
		a.tokenCache = token.NewCache(tokenCacheSize)
	}
	if a.external == nil {
		a.external = a.cfg.Token.NewExternal()
	}
	return &token.Verifier{Issuer: a.cfg.Token.Issuer, Audience: a.cfg.Token.Audience, Leeway: a.cfg.Token.Leeway, Keys: a.tokenKeys,
		Cache: a.tokenCache, External: a.external}
}

// tokenCacheSize bounds the verified tokens a process remembers (about
// 3 MiB); a token not remembered is verified again.
const tokenCacheSize = 10_000

// serverAuth is the end-user authentication of a component's server:
// public lists what anonymous callers may call; workloads names the
// components trusted to call as themselves, without a token.
func (a *App) serverAuth(v mesh.TokenVerifier, public []string, workloads ...string) mesh.Authentication {
	auth := mesh.Authentication{Tokens: v, Public: public}
	if a.ids != nil {
		for _, w := range workloads {
			auth.Workloads = append(auth.Workloads, identity.Component(a.ids.TrustDomain(), w).String())
		}
	}
	return auth
}
