package token_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/token"
)

// issuer is a real key pair published through a real KeySet, with a
// counter of fetches.
type issuer struct {
	mu      sync.Mutex
	keys    map[string]*ecdsa.PrivateKey
	current string
	fetches atomic.Int32
	down    atomic.Bool
}

func newIssuer(t testing.TB) *issuer {
	is := &issuer{keys: map[string]*ecdsa.PrivateKey{}}
	is.rotate(t)
	return is
}

func (is *issuer) rotate(t testing.TB) string {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	kid := "k" + string(rune('a'+len(is.keys)))
	is.keys[kid], is.current = k, kid
	return kid
}

func (is *issuer) fetch(context.Context) ([]jose.JSONWebKey, error) {
	is.fetches.Add(1)
	if is.down.Load() {
		return nil, errors.New("issuer unreachable")
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	var out []jose.JSONWebKey
	for kid, k := range is.keys {
		out = append(out, token.PublicJWK(&k.PublicKey, kid))
	}
	return out, nil
}

func (is *issuer) sign(t testing.TB, c token.Claims) string {
	is.mu.Lock()
	k, kid := is.keys[is.current], is.current
	is.mu.Unlock()
	s, err := token.Sign(k, kid, c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var t0 = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func claims(sub string, exp time.Duration) token.Claims {
	return token.Claims{Claims: jwt.Claims{Issuer: "trellis", Subject: sub, Audience: jwt.Audience{"trellis"},
		IssuedAt: jwt.NewNumericDate(t0), NotBefore: jwt.NewNumericDate(t0), Expiry: jwt.NewNumericDate(t0.Add(exp))}, Roles: []string{"admin"}}
}

func verifier(is *issuer, now *time.Time, cache bool) *token.Verifier {
	v := &token.Verifier{Issuer: "trellis", Audience: "trellis", Keys: token.NewKeySet(is.fetch, time.Second, time.Hour), Now: func() time.Time { return *now }}
	if cache {
		v.Cache = token.NewCache(100)
	}
	return v
}

func TestVerify(t *testing.T) {
	t.Parallel()
	is := newIssuer(t)
	other := newIssuer(t) // same kid, another key: a forgery
	good := claims("u1", 15*time.Minute)
	wrongAud, wrongIss, noExp, noSub := good, good, good, good
	wrongAud.Audience = jwt.Audience{"someone-else"}
	wrongIss.Issuer = "evil"
	noExp.Expiry = nil
	noSub.Subject = ""
	hs, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte("0123456789abcdef0123456789abcdef")}, (&jose.SignerOptions{}).WithHeader("kid", "ka"))
	hsToken, _ := jwt.Signed(hs).Claims(good).Serialize()
	valid := is.sign(t, good)
	parts := strings.Split(valid, ".")
	tests := []struct {
		name  string
		raw   string
		at    time.Duration // after t0
		ok    bool
		cache bool
	}{
		{"valid", valid, time.Minute, true, false},
		{"valid, cached", valid, time.Minute, true, true},
		{"expired", valid, 16 * time.Minute, false, false},
		{"expired, within the leeway (clock skew)", valid, 15*time.Minute + 20*time.Second, true, false},
		{"expired past the leeway", valid, 15*time.Minute + 40*time.Second, false, false},
		{"not yet valid, within the leeway", valid, -20 * time.Second, true, false},
		{"not yet valid", valid, -2 * time.Minute, false, false},
		{"another audience", is.sign(t, wrongAud), time.Minute, false, false},
		{"another issuer", is.sign(t, wrongIss), time.Minute, false, false},
		{"no expiry", is.sign(t, noExp), time.Minute, false, false},
		{"no subject", is.sign(t, noSub), time.Minute, false, false},
		{"signed by an unknown key", other.sign(t, good), time.Minute, false, false},
		{"HS256 with a guessable secret", hsToken, time.Minute, false, false},
		{"alg none", "eyJhbGciOiJub25lIiwia2lkIjoia2EifQ." + parts[1] + ".", time.Minute, false, false},
		{"payload swapped", parts[0] + "." + strings.Split(is.sign(t, claims("u2", time.Hour)), ".")[1] + "." + parts[2], time.Minute, false, false},
		{"too long", valid + strings.Repeat("A", token.MaxTokenBytes), time.Minute, false, false},
		{"garbage", "not a token", time.Minute, false, false},
		{"empty", "", time.Minute, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			now := t0.Add(tt.at)
			v := verifier(is, &now, tt.cache)
			for range 2 { // twice: the second may come from the cache
				p, err := v.Verify(context.Background(), tt.raw)
				if (err == nil) != tt.ok {
					t.Fatalf("Verify: %v, want ok=%v", err, tt.ok)
				}
				if tt.ok && (p.Subject != "u1" || !p.Admin()) {
					t.Fatalf("principal %+v", p)
				}
			}
		})
	}
}

// TestCachedTokenStillExpires: a cached token is refused once it expires.
func TestCachedTokenStillExpires(t *testing.T) {
	t.Parallel()
	is := newIssuer(t)
	now := t0
	v := verifier(is, &now, true)
	raw := is.sign(t, claims("u1", time.Minute))
	if _, err := v.Verify(context.Background(), raw); err != nil {
		t.Fatal(err)
	}
	now = t0.Add(2 * time.Minute)
	if _, err := v.Verify(context.Background(), raw); err == nil {
		t.Fatal("an expired token was accepted from the cache")
	}
}

// TestRotationFetchesTheNewKeyOnce: a token signed by a new key fetches
// the set again, once; made-up key ids cannot make a fetch storm.
func TestRotationFetchesTheNewKeyOnce(t *testing.T) {
	t.Parallel()
	is := newIssuer(t)
	now := t0
	v := verifier(is, &now, false)
	old := is.sign(t, claims("u1", time.Hour))
	if _, err := v.Verify(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	is.rotate(t)
	fresh := is.sign(t, claims("u1", time.Hour))
	time.Sleep(1100 * time.Millisecond) // past the refetch limit
	before := is.fetches.Load()
	for range 50 {
		for _, raw := range []string{old, fresh} {
			if _, err := v.Verify(context.Background(), raw); err != nil {
				t.Fatalf("after rotation: %v", err)
			}
		}
	}
	if got := is.fetches.Load() - before; got != 1 {
		t.Fatalf("%d fetches for one new key, want 1", got)
	}
	// 200 tokens naming unknown keys, all at once: each caller waits for
	// the next fetch allowed, and they share it — at most two fetches
	// (one now, one a second later), never one per token.
	forger := newIssuer(t)
	forger.current = "unknown"
	forger.keys["unknown"] = forger.keys["ka"]
	forged := forger.sign(t, claims("u1", time.Hour))
	before = is.fetches.Load()
	var wg sync.WaitGroup
	var accepted atomic.Int32
	for range 200 {
		wg.Go(func() {
			if _, err := v.Verify(context.Background(), forged); err == nil {
				accepted.Add(1)
			}
		})
	}
	wg.Wait()
	if accepted.Load() > 0 {
		t.Fatalf("%d forged tokens accepted", accepted.Load())
	}
	if got := is.fetches.Load() - before; got > 2 {
		t.Fatalf("%d fetches for 200 tokens naming an unknown key, want at most 2", got)
	}
}

// TestIssuerDown: known keys keep verifying while the issuer is down; an
// unknown key is then the verifier's fault (ErrVerifierUnavailable), not
// the token's.
func TestIssuerDown(t *testing.T) {
	t.Parallel()
	is := newIssuer(t)
	now := t0
	v := verifier(is, &now, false)
	raw := is.sign(t, claims("u1", time.Hour))
	if _, err := v.Verify(context.Background(), raw); err != nil {
		t.Fatal(err)
	}
	is.down.Store(true)
	if _, err := v.Verify(context.Background(), raw); err != nil {
		t.Fatalf("known key while the issuer is down: %v", err)
	}
	cold := verifier(is, &now, false)
	for i := range 3 { // the first fetches, the next are within the refetch limit
		if _, err := cold.Verify(context.Background(), raw); !errors.Is(err, mesh.ErrVerifierUnavailable) {
			t.Fatalf("call %d with no keys and the issuer down: %v, want ErrVerifierUnavailable", i, err)
		}
	}
}

// BenchmarkVerify: a full ES256 verification against one served from the
// cache of verified tokens (keys are cached in both: no fetch per call).
func BenchmarkVerify(b *testing.B) {
	is := newIssuer(b)
	now := t0
	raw := is.sign(b, claims("u1", time.Hour))
	for _, cache := range []bool{false, true} {
		name := "uncached"
		if cache {
			name = "cached"
		}
		b.Run(name, func(b *testing.B) {
			v := verifier(is, &now, cache)
			for b.Loop() {
				if _, err := v.Verify(context.Background(), raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzVerify: no input verifies but the issuer's own token, and none
// panics or hangs. `go test -fuzz FuzzVerify ./mesh/token` explores; the
// seeds run with the unit tests.
func FuzzVerify(f *testing.F) {
	is := newIssuer(f)
	real := is.sign(f, claims("u1", time.Hour))
	for _, s := range []string{"", ".", "..", "a.b.c", real, real + "x", strings.ToUpper(real), "eyJhbGciOiJub25lIn0.e30.",
		strings.Repeat("A", 5000)} {
		f.Add(s)
	}
	now := t0.Add(time.Minute)
	v := verifier(is, &now, true)
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := v.Verify(context.Background(), raw)
		if err == nil && (raw != real || p.Subject != "u1") {
			t.Fatalf("%q verified as %+v", raw, p)
		}
	})
}
