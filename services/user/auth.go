package user

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"
	"github.com/throttled/throttled/v2"
	"golang.org/x/crypto/bcrypt"

	"github.com/trellis-mesh/trellis/internal/apperr"
	"github.com/trellis-mesh/trellis/internal/quota"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/token"
)

// AuthConfig tunes sign-in and the tokens the user service issues.
type AuthConfig struct {
	// Issuer and Audience of the access tokens (token.Config's).
	Issuer, Audience string
	// AccessTTL is how long an access token is valid.
	AccessTTL time.Duration
	// RefreshTTL is how long a refresh token is valid if unused.
	RefreshTTL time.Duration
	// KeyRotation is how long a signing key signs before a new one
	// replaces it; a replaced key is still published until the tokens it
	// signed have expired.
	KeyRotation time.Duration
	// SignInQuota limits failed sign-ins per account (zero: none; the
	// flag's default is DefaultSignInQuota).
	SignInQuota quota.Quota
	// SignInStore keeps the counts; nil: in this process (replicas
	// share them through Redis when --redis-url is set).
	SignInStore throttled.GCRAStoreCtx
	// SignInStoreTimeout bounds one check against SignInStore; past it
	// the attempt is let through. 0 means quota.DefaultStoreTimeout.
	SignInStoreTimeout time.Duration
	// SignInStoreFailed, when set, is told each time SignInStore could
	// not answer (the attempt was let through, or its failure went
	// uncounted), so that a limit which stopped working is seen.
	SignInStoreFailed func(error)
}

// Defaults of AuthConfig.
const (
	DefaultAccessTTL   = 15 * time.Minute
	DefaultRefreshTTL  = 30 * 24 * time.Hour
	DefaultKeyRotation = 24 * time.Hour
	// MaxRefreshTokenLen bounds a refresh token a client sends; Trellis's
	// are 43 characters.
	MaxRefreshTokenLen = 128
)

// RegisterFlags defines access-token-ttl, refresh-token-ttl and
// signing-key-rotation, prefixed.
func (c *AuthConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.DurationVar(&c.AccessTTL, prefix+"access-token-ttl", DefaultAccessTTL, "lifetime of access tokens (JWT)")
	fs.DurationVar(&c.RefreshTTL, prefix+"refresh-token-ttl", DefaultRefreshTTL, "lifetime of an unused refresh token")
	fs.DurationVar(&c.KeyRotation, prefix+"signing-key-rotation", DefaultKeyRotation, "how long a token signing key is used before a new one replaces it")
	c.SignInQuota = DefaultSignInQuota
	fs.Var(quota.Flag{Q: &c.SignInQuota}, prefix+"rate-signin-account", "failed sign-ins per account (N/s, N/m, N/h; 0: no limit); past it: RESOURCE_EXHAUSTED (429) with a retry delay")
}

// Validate reports settings that cannot work.
func (c *AuthConfig) Validate() error {
	if c.AccessTTL < time.Second || c.RefreshTTL < c.AccessTTL || c.KeyRotation < time.Second {
		return errors.New("--access-token-ttl and --signing-key-rotation must be at least 1s, --refresh-token-ttl at least --access-token-ttl")
	}
	return nil
}

func (c AuthConfig) withDefaults() AuthConfig {
	if c.Issuer == "" {
		c.Issuer = token.DefaultIssuer
	}
	if c.Audience == "" {
		c.Audience = token.DefaultAudience
	}
	if c.AccessTTL <= 0 {
		c.AccessTTL = DefaultAccessTTL
	}
	if c.RefreshTTL <= 0 {
		c.RefreshTTL = DefaultRefreshTTL
	}
	if c.KeyRotation <= 0 {
		c.KeyRotation = DefaultKeyRotation
	}
	if c.SignInStoreTimeout <= 0 {
		c.SignInStoreTimeout = quota.DefaultStoreTimeout
	}
	if c.SignInStoreFailed == nil {
		c.SignInStoreFailed = func(error) {}
	}
	return c
}

// Tokens is a new token pair.
type Tokens struct {
	Access    string
	ExpiresIn time.Duration
	Refresh   string
	UserID    string
}

// keyring holds the signing keys: every replica signs with the newest and
// publishes all of them; keys live in the store, so replicas agree.
type keyring struct {
	store    AuthStore
	rotation time.Duration
	keep     time.Duration // how long a replaced key stays published
	now      func() time.Time

	mu     sync.Mutex
	keys   []SigningKey // newest first
	loaded time.Time
}

// keysFresh is how old the keys a replica publishes or looks a kid up in
// may be: another replica's new key is seen within it. A second (as
// before) let a component that had fetched the set a moment before the
// other replica's first key refuse good tokens for seconds (the chaos
// suite's rolling restart, at start: 55–248 of ~2100 orders 401); each
// reread is one small query, so an unknown kid or a JWKS request costs at
// most ten per replica a second.
const keysFresh = 100 * time.Millisecond

// load rereads the keys, at most every keysFresh unless forced.
func (k *keyring) load(ctx context.Context, force bool) ([]SigningKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !force && k.keys != nil && k.now().Sub(k.loaded) < keysFresh {
		return k.keys, nil
	}
	keys, err := k.store.SigningKeys(ctx)
	if err != nil {
		return k.keys, err
	}
	k.keys, k.loaded = keys, k.now()
	return keys, nil
}

// current returns the key to sign with, making a new one when the newest
// is older than the rotation period.
func (k *keyring) current(ctx context.Context) (SigningKey, error) {
	k.mu.Lock()
	keys := k.keys
	k.mu.Unlock()
	if len(keys) > 0 && k.now().Sub(keys[0].CreateTime) < k.rotation {
		return keys[0], nil
	}
	keys, err := k.load(ctx, true)
	if err != nil {
		return SigningKey{}, fmt.Errorf("read signing keys: %w", err)
	}
	if len(keys) > 0 && k.now().Sub(keys[0].CreateTime) < k.rotation {
		return keys[0], nil
	}
	if err := k.rotate(ctx); err != nil {
		return SigningKey{}, err
	}
	keys, err = k.load(ctx, true)
	if err != nil || len(keys) == 0 {
		return SigningKey{}, fmt.Errorf("read signing keys: %w", err)
	}
	return keys[0], nil
}

// rotate makes a new signing key; the old ones stay published for keep.
// Replicas that rotate at once each add one: both are published, either
// signs.
func (k *keyring) rotate(ctx context.Context) error {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	jwk := token.PublicJWK(&priv.PublicKey, "")
	thumb, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return err
	}
	now := k.now().UTC().Truncate(time.Microsecond)
	sk := SigningKey{KID: base64.RawURLEncoding.EncodeToString(thumb), Key: priv, CreateTime: now}
	if err := k.store.AddSigningKey(ctx, sk, now.Add(-k.rotation-k.keep)); err != nil {
		return fmt.Errorf("store signing key: %w", err)
	}
	_, err = k.load(ctx, true)
	return err
}

// Key implements token.KeySource for the user service's own verifier.
func (k *keyring) Key(ctx context.Context, kid string) (*ecdsa.PublicKey, error) {
	find := func(keys []SigningKey) *ecdsa.PublicKey {
		for _, sk := range keys {
			if sk.KID == kid {
				return &sk.Key.PublicKey
			}
		}
		return nil
	}
	k.mu.Lock()
	pub := find(k.keys)
	k.mu.Unlock()
	if pub != nil {
		return pub, nil
	}
	keys, err := k.load(ctx, false) // another replica may have rotated
	if pub = find(keys); pub != nil {
		return pub, nil
	}
	if err != nil { // the database's fault, not the token's
		return nil, fmt.Errorf("%w: read signing keys: %v", mesh.ErrVerifierUnavailable, err)
	}
	return nil, token.ErrUnknownKey
}

// TokenKeys is the user service's own key source: it verifies tokens
// against the stored keys without a network call.
func (s *Service) TokenKeys() token.KeySource { return s.keys }

// RotateSigningKey replaces the signing key now (the rotation period does
// it on its own); tokens signed by the old key stay valid.
func (s *Service) RotateSigningKey(ctx context.Context) error { return s.keys.rotate(ctx) }

// JWKS returns the published public keys, newest first.
func (s *Service) JWKS(ctx context.Context) ([]jose.JSONWebKey, error) {
	keys, err := s.keys.load(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("read signing keys: %w", err)
	}
	if len(keys) == 0 {
		if _, err := s.keys.current(ctx); err != nil {
			return nil, err
		}
		if keys, err = s.keys.load(ctx, false); err != nil {
			return nil, err
		}
	}
	out := make([]jose.JSONWebKey, len(keys))
	for i, k := range keys {
		out[i] = token.PublicJWK(&k.Key.PublicKey, k.KID)
	}
	return out, nil
}

// errSignIn is the one answer to every failed sign-in: no oracle telling
// an unknown email from a wrong password.
var errSignIn = apperr.Unauthenticated("email or password is wrong")

// errRefresh is the one answer to every refresh token that is not
// accepted.
var errRefresh = apperr.Unauthenticated("the refresh token is invalid, expired or revoked: sign in again")

// SignIn checks the password of the account with email and returns new
// tokens. An unknown email costs the same bcrypt comparison as a known
// one (against a hash made at start with the same cost), so the answer
// and its time say nothing about whether the account exists.
func (s *Service) SignIn(ctx context.Context, email, password string) (Tokens, error) {
	var u User
	found := false
	key := emailKey(email)
	norm, nerr := NormalizeEmail(email)
	if nerr == nil {
		key = emailKey(norm)
	}
	if err := s.signIns.check(ctx, key); err != nil {
		return Tokens{}, err
	}
	if nerr == nil {
		var err error
		switch u, err = s.store.GetByEmail(ctx, key); {
		case err == nil:
			found = true
		case !errors.Is(err, ErrNotFound):
			return Tokens{}, fmt.Errorf("sign in: %w", err)
		}
	}
	hash := s.dummy
	if found {
		hash = []byte(u.PasswordHash)
	}
	pw, perr := NormalizePassword(password)
	ok := bcrypt.CompareHashAndPassword(hash, []byte(pw)) == nil
	if !found || !ok || perr != nil {
		s.signIns.failed(ctx, key)
		return Tokens{}, errSignIn
	}
	return s.issue(ctx, u, uuid.NewString())
}

// dummyHash is a bcrypt hash at the service's cost that no password
// matches, compared against when the email is unknown. Made with the
// service, so that no sign-in pays for making it.
func dummyHash(cost int) []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	h, _ := bcrypt.GenerateFromPassword([]byte(hex.EncodeToString(b)[:60]), cost)
	return h
}

// Refresh exchanges a refresh token for new tokens. The token is used up;
// presenting a used one again revokes its whole family.
func (s *Service) Refresh(ctx context.Context, refresh string) (Tokens, error) {
	if refresh == "" || len(refresh) > MaxRefreshTokenLen {
		return Tokens{}, errRefresh
	}
	t, err := s.store.UseRefreshToken(ctx, hashToken(refresh), s.now())
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrTokenReused):
		return Tokens{}, errRefresh
	case err != nil:
		return Tokens{}, fmt.Errorf("refresh: %w", err)
	}
	u, err := s.store.Get(ctx, t.UserID)
	switch {
	case errors.Is(err, ErrNotFound):
		return Tokens{}, errRefresh
	case err != nil:
		return Tokens{}, fmt.Errorf("refresh: %w", err)
	}
	return s.issue(ctx, u, t.FamilyID)
}

// SignOut revokes the refresh token's family; unknown tokens are fine.
func (s *Service) SignOut(ctx context.Context, refresh string) error {
	if refresh == "" || len(refresh) > MaxRefreshTokenLen {
		return nil
	}
	if err := s.store.RevokeFamily(ctx, hashToken(refresh)); err != nil {
		return fmt.Errorf("sign out: %w", err)
	}
	return nil
}

func hashToken(t string) string {
	h := sha256.Sum256([]byte(t))
	return hex.EncodeToString(h[:])
}

// issue signs an access token for u and stores a new refresh token of
// family.
func (s *Service) issue(ctx context.Context, u User, family string) (Tokens, error) {
	key, err := s.keys.current(ctx)
	if err != nil {
		return Tokens{}, err
	}
	now := s.now()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return Tokens{}, err
	}
	refresh := base64.RawURLEncoding.EncodeToString(b)
	if err := s.store.AddRefreshToken(ctx, RefreshToken{Hash: hashToken(refresh), FamilyID: family, UserID: u.ID, ExpireTime: now.Add(s.auth.RefreshTTL)}); err != nil {
		return Tokens{}, fmt.Errorf("store refresh token: %w", err)
	}
	access, err := token.Sign(key.Key, key.KID, token.Claims{
		Claims: jwt.Claims{
			Issuer: s.auth.Issuer, Subject: u.ID, Audience: jwt.Audience{s.auth.Audience},
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(s.auth.AccessTTL)),
			ID: uuid.NewString(),
		},
		Roles: u.Roles,
	})
	if err != nil {
		return Tokens{}, fmt.Errorf("sign access token: %w", err)
	}
	return Tokens{Access: access, ExpiresIn: s.auth.AccessTTL, Refresh: refresh, UserID: u.ID}, nil
}

// GrantAdmin gives the user with email the admin role (the `trellis users
// grant-admin` command); tokens issued afterwards carry it.
func (s *Service) GrantAdmin(ctx context.Context, email string) (User, error) {
	norm, err := NormalizeEmail(email)
	if err != nil {
		return User{}, apperr.NotFound("no user with this email")
	}
	u, err := s.store.GetByEmail(ctx, emailKey(norm))
	if err != nil {
		return User{}, apperr.NotFound("no user with this email")
	}
	if slices.Contains(u.Roles, RoleAdmin) {
		return u, nil
	}
	return s.store.SetRoles(ctx, emailKey(norm), append(slices.Clone(u.Roles), RoleAdmin))
}

// RoleAdmin may read and change every user and order.
const RoleAdmin = "admin"

// mayAccess reports whether the principal may read or change user id: the
// user itself or an admin. Everyone else is told the user does not exist.
func mayAccess(p *mesh.Principal, id string) bool { return p.Is(id) || p.Admin() }
