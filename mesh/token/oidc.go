package token

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/trellis-mesh/trellis/mesh"
)

// External accepts access tokens in JWT form from an OpenID provider
// (--oidc-issuer): go-oidc v3 finds its keys by OpenID discovery, caches
// them and fetches them again when a token names a key it does not know;
// it checks the signature, iss, aud (Audience) and exp. A token from there
// is a machine principal "oidc:<sub>" — never a Trellis user — with the
// token's scopes (scope, or Hydra's scp); AdminScope among them makes it
// an admin.
type External struct {
	Issuer, Audience, AdminScope string
	// Client makes the discovery and key requests; nil: a client with a
	// 5 s timeout.
	Client *http.Client

	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier
	tried    time.Time
	err      error
}

// principal verifies raw with the provider's keys.
func (e *External) principal(ctx context.Context, raw string, now func() time.Time) (*mesh.Principal, error) {
	v, err := e.verifierFor(ctx, now)
	if err != nil {
		return nil, err
	}
	tok, err := v.Verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	var c struct {
		Scope string   `json:"scope"`
		Scp   []string `json:"scp"`
	}
	if err := tok.Claims(&c); err != nil {
		return nil, err
	}
	if tok.Subject == "" {
		return nil, fmt.Errorf("token from %s without sub", e.Issuer)
	}
	scopes := append(strings.Fields(c.Scope), c.Scp...)
	p := &mesh.Principal{Subject: "oidc:" + tok.Subject, Scopes: scopes}
	if e.AdminScope != "" && slices.Contains(scopes, e.AdminScope) {
		p.Roles = []string{"admin"}
	}
	return p, nil
}

// verifierFor discovers the provider once (again at most every 5 s while
// it fails: a provider down at start is found later).
func (e *External) verifierFor(ctx context.Context, now func() time.Time) (*oidc.IDTokenVerifier, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.verifier != nil {
		return e.verifier, nil
	}
	if time.Since(e.tried) < 5*time.Second && e.err != nil {
		return nil, e.err
	}
	e.tried = time.Now()
	client := e.Client
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	// The provider's key set keeps this context for its later fetches:
	// it must outlive the call that happened to come first.
	// The client's timeout bounds the discovery.
	pctx := oidc.ClientContext(context.WithoutCancel(ctx), client)
	p, err := oidc.NewProvider(pctx, e.Issuer)
	if err != nil {
		e.err = fmt.Errorf("%w: OpenID discovery of %s: %v", mesh.ErrVerifierUnavailable, e.Issuer, err)
		return nil, e.err
	}
	e.verifier = p.VerifierContext(pctx, &oidc.Config{ClientID: e.Audience, Now: now})
	return e.verifier, nil
}
