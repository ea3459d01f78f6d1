package app

import (
	"context"
	"crypto/tls"
	_ "embed"
	"fmt"
	"strings"

	"google.golang.org/grpc/authz"
	"google.golang.org/grpc/credentials"

	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/identity"
)

// defaultPolicy is the authorization policy without --authz-policy, for
// the trust domain TRUST_DOMAIN: the gateway and clients
// (spiffe://<td>/client/*) call the public API; the order service only
// reads users; any workload of the trust domain checks health and uses
// reflection; nothing else is allowed.
//
//go:embed policy.json
var defaultPolicy string

// DefaultPolicy is the policy a trust domain gets without --authz-policy.
func DefaultPolicy(trustDomain string) string {
	return strings.ReplaceAll(defaultPolicy, "TRUST_DOMAIN", trustDomain)
}

// openSecurity opens the identity source and the authorization policy,
// unless --insecure-plaintext turned both off (loudly).
func (a *App) openSecurity(ctx context.Context) error {
	if a.cfg.Identity.Insecure {
		a.log.Warn("INSECURE: --insecure-plaintext is set: gRPC and NATS are plaintext, unauthenticated and unauthorized; use it only to measure against plaintext")
		return nil
	}
	a.idMetrics = identity.NewMetrics(a.reg)
	ids, err := identity.Open(ctx, a.cfg.Identity, a.log)
	if err != nil {
		return err
	}
	a.ids = ids
	a.closers = append(a.closers, ids.Close)
	a.sources = map[string]identity.Source{}
	if a.cfg.AuthzPolicy == "" {
		p, err := authz.NewStatic(DefaultPolicy(ids.TrustDomain().Name()))
		if err != nil {
			return fmt.Errorf("built-in authorization policy: %w", err)
		}
		a.policy = p
		return nil
	}
	p, err := authz.NewFileWatcher(a.cfg.AuthzPolicy, a.cfg.AuthzReload)
	if err != nil {
		return fmt.Errorf("--authz-policy: %w", err)
	}
	a.closers = append(a.closers, func() error { p.Close(); return nil })
	a.policy = p
	return nil
}

// source is a component's identity, made once per process.
func (a *App) source(component string) (identity.Source, error) {
	if src, ok := a.sources[component]; ok {
		return src, nil
	}
	src, err := a.ids.For(component)
	if err != nil {
		return nil, err
	}
	a.sources[component] = src
	return src, nil
}

// secureServer gives a component's server its credentials and the policy.
func (a *App) secureServer(component string, cfg mesh.ServerConfig) (mesh.ServerConfig, error) {
	if a.ids == nil {
		return cfg, nil
	}
	src, err := a.source(component)
	if err != nil {
		return cfg, err
	}
	cfg.Credentials = identity.ServerCredentials(src, a.log.With("component", component), a.idMetrics)
	cfg.Policy = a.policy
	return cfg, nil
}

// clientCredentials are the credentials caller presents to upstream,
// which must prove it is spiffe://<td>/trellis/<upstream>; nil without
// security.
func (a *App) clientCredentials(caller, upstream string) (credentials.TransportCredentials, error) {
	if a.ids == nil {
		return nil, nil
	}
	src, err := a.source(caller)
	if err != nil {
		return nil, err
	}
	return identity.ClientCredentials(src, identity.Component(a.ids.TrustDomain(), upstream), a.log.With("component", caller), a.idMetrics), nil
}

// natsTLS is the TLS configuration component presents to NATS (nil
// without security). The server must be a Trellis component of the trust
// domain: spiffe://<td>/trellis/nats for a NATS of its own, or the
// component whose process embeds it (one identity per process with files
// or the Workload API).
func (a *App) natsTLS(component string) (*tls.Config, error) {
	if a.ids == nil {
		return nil, nil
	}
	src, err := a.source(component)
	if err != nil {
		return nil, err
	}
	return identity.TLSConfig(src, identity.AuthorizeComponent(a.ids.TrustDomain())), nil
}
