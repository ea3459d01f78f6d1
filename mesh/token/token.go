// Package token issues and verifies Trellis access tokens: JWTs signed
// with ES256 (go-jose v4), with a key id, issuer, audience, subject and
// expiry, and the subject's roles. Verifiers find public keys in a KeySet
// that fetches the issuer's JSON Web Key Set once and again only when a
// token names a key it does not know (key rotation) or the set is old, so
// verifying costs no network round trip per call.
package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/trellis-mesh/trellis/mesh"
)

// Limits and defaults of tokens.
const (
	// MaxTokenBytes caps an access token a verifier looks at; a Trellis
	// token is about 400 bytes.
	MaxTokenBytes = 4096
	// DefaultLeeway is the clock skew tolerated on exp, nbf and iat.
	DefaultLeeway = 30 * time.Second
	// Algorithm is the only signature algorithm issued and accepted.
	Algorithm = jose.ES256
)

// Claims are the claims of a Trellis access token.
type Claims struct {
	jwt.Claims
	// Roles of the subject ("admin").
	Roles []string `json:"roles,omitempty"`
	// Scope, space-separated (OAuth 2.0), for machine clients.
	Scope string `json:"scope,omitempty"`
}

// Sign returns the compact JWT of claims signed with key under kid.
func Sign(key *ecdsa.PrivateKey, kid string, claims Claims) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: Algorithm, Key: jose.JSONWebKey{Key: key, KeyID: kid, Algorithm: string(Algorithm)}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	return jwt.Signed(signer).Claims(claims).Serialize()
}

// PublicJWK is the public half of key as it is published in a key set.
func PublicJWK(key *ecdsa.PublicKey, kid string) jose.JSONWebKey {
	return jose.JSONWebKey{Key: key, KeyID: kid, Algorithm: string(Algorithm), Use: "sig"}
}

// FetchFunc returns the issuer's current public keys.
type FetchFunc func(ctx context.Context) ([]jose.JSONWebKey, error)

// KeySet caches an issuer's public keys. Lookups of known keys take no
// lock; an unknown kid refetches the set, at most once per MinRefresh, so
// tokens with made-up key ids cannot turn into a flood of fetches.
type KeySet struct {
	fetch      FetchFunc
	minRefresh time.Duration
	maxAge     time.Duration
	now        func() time.Time

	keys    atomic.Pointer[keySnapshot]
	mu      sync.Mutex // serialises fetches
	last    time.Time  // last fetch attempt
	lastErr error      // its error
}

type keySnapshot struct {
	byID    map[string]*ecdsa.PublicKey
	fetched time.Time
}

// NewKeySet returns a key set over fetch: refreshed at most every
// minRefresh (default 1s) on an unknown kid, and when older than maxAge
// (default 5m).
func NewKeySet(fetch FetchFunc, minRefresh, maxAge time.Duration) *KeySet {
	if minRefresh <= 0 {
		minRefresh = time.Second
	}
	if maxAge <= 0 {
		maxAge = 5 * time.Minute
	}
	return &KeySet{fetch: fetch, minRefresh: minRefresh, maxAge: maxAge, now: time.Now}
}

// Run keeps the set fresh until ctx ends: fetched at once (retried every
// second until it succeeds), then every half of maxAge, so that tokens
// keep verifying while the issuer is down — with the keys last seen.
func (k *KeySet) Run(ctx context.Context) {
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		k.mu.Lock()
		k.last = time.Time{} // not limited: this is the scheduled fetch
		k.mu.Unlock()
		if _, _, err := k.refresh(ctx); err != nil {
			wait = time.Second
			continue
		}
		wait = k.maxAge / 2
	}
}

// ErrUnknownKey: no key of the set has the token's kid, even after a
// refresh.
var ErrUnknownKey = errors.New("token signed by an unknown key")

// Key returns the public key with id kid.
func (k *KeySet) Key(ctx context.Context, kid string) (*ecdsa.PublicKey, error) {
	snap := k.keys.Load()
	if snap != nil && k.now().Sub(snap.fetched) < k.maxAge {
		if key, ok := snap.byID[kid]; ok {
			return key, nil
		}
	}
	snap, fetched, err := k.refresh(ctx)
	if err == nil && !fetched && snap != nil && snap.byID[kid] == nil {
		// The set was fetched less than MinRefresh ago, perhaps just before
		// the key was published (another replica's new key, a token signed
		// a moment after our fetch): wait for the next fetch allowed instead
		// of refusing a good token. A made-up kid costs its caller this
		// wait; the issuer still sees at most one fetch per MinRefresh,
		// however many callers wait.
		k.mu.Lock()
		wait := k.last.Add(k.minRefresh).Sub(k.now())
		k.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(max(wait, 0)):
		}
		snap, _, err = k.refresh(ctx)
	}
	if snap == nil {
		if err == nil {
			err = fmt.Errorf("%w: no signing keys yet", mesh.ErrVerifierUnavailable)
		}
		return nil, err
	}
	if key, ok := snap.byID[kid]; ok {
		return key, nil
	}
	if err != nil {
		return nil, err
	}
	return nil, ErrUnknownKey
}

// Refresh fetches the set now (unless another fetch ran within
// minRefresh: then fetched is false).
func (k *KeySet) refresh(ctx context.Context) (_ *keySnapshot, fetched bool, _ error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	snap := k.keys.Load()
	if now := k.now(); now.Sub(k.last) < k.minRefresh {
		if snap == nil {
			return nil, false, k.lastErr // no keys yet: the last fetch failed
		}
		return snap, false, nil
	}
	k.last = k.now()
	// A fetch outlives a caller that gives up: the next caller needs it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	jwks, err := k.fetch(ctx)
	if err != nil {
		k.lastErr = fmt.Errorf("%w: fetch signing keys: %v", mesh.ErrVerifierUnavailable, err)
		return snap, true, k.lastErr
	}
	k.lastErr = nil
	next := &keySnapshot{byID: make(map[string]*ecdsa.PublicKey, len(jwks)), fetched: k.now()}
	for _, j := range jwks {
		if pub, ok := j.Key.(*ecdsa.PublicKey); ok && j.KeyID != "" {
			next.byID[j.KeyID] = pub
		}
	}
	k.keys.Store(next)
	return next, true, nil
}

// KeySource finds the public key of a key id.
type KeySource interface {
	Key(ctx context.Context, kid string) (*ecdsa.PublicKey, error)
}

// Verifier checks Trellis access tokens.
type Verifier struct {
	// Issuer and Audience the token must name.
	Issuer, Audience string
	// Keys finds the signing keys.
	Keys KeySource
	// Leeway is the clock skew tolerated; 0 means DefaultLeeway.
	Leeway time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// External, when set, also accepts tokens its OpenID provider issued
	// (told apart by their iss).
	External *External
	// Cache, when set, remembers tokens already verified, so that a
	// client's next calls with the same token cost a hash and a lookup
	// instead of an ECDSA verification. Expiry is checked on every call.
	Cache *Cache
}

// Cache remembers verified tokens by their SHA-256, a bounded number
// (least recently used forgotten): a token it holds was verified with a
// published key, so only the time checks are left.
type Cache struct{ lru *lru.Cache[[32]byte, *Claims] }

// NewCache returns a cache of up to size verified tokens (each about 300
// bytes: 10 000 take ~3 MiB).
func NewCache(size int) *Cache {
	c, err := lru.New[[32]byte, *Claims](size)
	if err != nil {
		panic(err) // size <= 0: a programming error
	}
	return &Cache{lru: c}
}

// Verify implements mesh.TokenVerifier.
func (v *Verifier) Verify(ctx context.Context, raw string) (*mesh.Principal, error) {
	if v.External != nil && len(raw) <= MaxTokenBytes && issuerOf(raw) == v.External.Issuer {
		now := v.Now
		if now == nil {
			now = time.Now
		}
		return v.External.principal(ctx, raw, now)
	}
	c, err := v.Claims(ctx, raw)
	if err != nil {
		return nil, err
	}
	return &mesh.Principal{Subject: c.Subject, Roles: c.Roles, Scopes: strings.Fields(c.Scope)}, nil
}

// issuerOf reads the iss claim of a JWT without verifying anything, only
// to choose the verifier; "" if there is none.
func issuerOf(raw string) string {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.PS256, jose.EdDSA, jose.RS384, jose.RS512, jose.ES384, jose.ES512})
	if err != nil {
		return ""
	}
	var c jwt.Claims
	if tok.UnsafeClaimsWithoutVerification(&c) != nil {
		return ""
	}
	return c.Issuer
}

// Claims verifies raw and returns its claims.
func (v *Verifier) Claims(ctx context.Context, raw string) (*Claims, error) {
	if len(raw) > MaxTokenBytes {
		return nil, fmt.Errorf("token longer than %d bytes", MaxTokenBytes)
	}
	now, leeway := time.Now, v.Leeway
	if v.Now != nil {
		now = v.Now
	}
	if leeway == 0 {
		leeway = DefaultLeeway
	}
	var sum [32]byte
	if v.Cache != nil {
		sum = sha256.Sum256([]byte(raw))
		if c, ok := v.Cache.lru.Get(sum); ok {
			if err := c.ValidateWithLeeway(jwt.Expected{Issuer: v.Issuer, AnyAudience: jwt.Audience{v.Audience}, Time: now()}, leeway); err != nil {
				return nil, err
			}
			return c, nil
		}
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{Algorithm})
	if err != nil {
		return nil, err
	}
	if len(tok.Headers) != 1 || tok.Headers[0].KeyID == "" {
		return nil, errors.New("token has no key id")
	}
	key, err := v.Keys.Key(ctx, tok.Headers[0].KeyID)
	if err != nil {
		return nil, err
	}
	var c Claims
	if err := tok.Claims(key, &c); err != nil {
		return nil, err
	}
	if c.Expiry == nil || c.Subject == "" {
		return nil, errors.New("token without exp or sub")
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: v.Issuer, AnyAudience: jwt.Audience{v.Audience}, Time: now()}, leeway); err != nil {
		return nil, err
	}
	if v.Cache != nil {
		v.Cache.lru.Add(sum, &c)
	}
	return &c, nil
}

// Defaults of Config.
const (
	DefaultIssuer   = "trellis"
	DefaultAudience = "trellis"
)

// Config is what every component that verifies Trellis tokens agrees on.
type Config struct {
	Issuer, Audience string
	Leeway           time.Duration
	// OIDCIssuer, when set, is an OpenID provider whose access tokens
	// (JWT, aud OIDCAudience) are accepted too, as machine principals;
	// OIDCAdminScope among their scopes makes them admins.
	OIDCIssuer, OIDCAudience, OIDCAdminScope string
}

// RegisterFlags defines token-issuer, token-audience and token-leeway,
// prefixed.
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&c.Issuer, prefix+"token-issuer", DefaultIssuer, "iss of the access tokens the user service issues and every service accepts")
	fs.StringVar(&c.Audience, prefix+"token-audience", DefaultAudience, "aud of the access tokens the user service issues and every service accepts")
	fs.DurationVar(&c.Leeway, prefix+"token-leeway", DefaultLeeway, "clock skew tolerated when checking a token's exp, nbf and iat")
	fs.StringVar(&c.OIDCIssuer, prefix+"oidc-issuer", "", "OpenID provider (issuer URL) whose JWT access tokens are accepted too, as machine principals; empty: none")
	fs.StringVar(&c.OIDCAudience, prefix+"oidc-audience", DefaultAudience, "aud that tokens of --oidc-issuer must carry")
	fs.StringVar(&c.OIDCAdminScope, prefix+"oidc-admin-scope", "trellis:admin", "scope that makes a --oidc-issuer token an admin")
}

// NewExternal is the verifier of --oidc-issuer's tokens, or nil.
func (c *Config) NewExternal() *External {
	if c.OIDCIssuer == "" {
		return nil
	}
	return &External{Issuer: c.OIDCIssuer, Audience: c.OIDCAudience, AdminScope: c.OIDCAdminScope}
}

// Validate reports settings that cannot work.
func (c *Config) Validate() error {
	if c.Issuer == "" || c.Audience == "" || c.Leeway < 0 || c.Leeway > 5*time.Minute {
		return errors.New("--token-issuer and --token-audience must be set, --token-leeway between 0 and 5m")
	}
	if c.OIDCIssuer != "" {
		u, err := url.Parse(c.OIDCIssuer)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || c.OIDCAudience == "" {
			return errors.New("--oidc-issuer must be an http(s) URL, with --oidc-audience set")
		}
		if c.OIDCIssuer == c.Issuer {
			return errors.New("--oidc-issuer must differ from --token-issuer")
		}
	}
	return nil
}
