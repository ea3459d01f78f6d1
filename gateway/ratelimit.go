package gateway

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/realclientip/realclientip-go"
	"github.com/throttled/throttled/v2"
	"github.com/throttled/throttled/v2/store/memstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/quota"
	"github.com/trellis-mesh/trellis/mesh"
)

// Rate-limit classes: each request counts against one, per client.
const (
	ClassRead  = "read"  // GET and HEAD
	ClassWrite = "write" // every other method
	ClassAuth  = "auth"  // creating an account and signing in: what password guessing and sign-up spam go through (refresh tokens are 256 random bits: refresh and sign-out are writes)
)

// Quota is N requests per period (internal/quota), kept here under its
// old name for the gateway's users.
type Quota = quota.Quota

// ParseQuota reads a quota flag value (quota.Parse).
func ParseQuota(v string) (Quota, error) { return quota.Parse(v) }

type quotaFlag = quota.Flag

// RateLimits are the gateway's per-client limits, one quota per class.
type RateLimits struct {
	Read, Write, Auth Quota
	// KeyHeader names a header that carries the client's address when the
	// gateway sits behind a proxy that sets it: X-Forwarded-For or
	// Forwarded (read from the right, see TrustedHops), or a header that
	// holds one address (X-Real-IP). Empty: the connection's remote
	// address. Never set it without such a proxy: clients could choose
	// their own bucket.
	KeyHeader string
	// TrustedHops is how many proxies in front of the gateway append to
	// an X-Forwarded-For or Forwarded header: the client is the
	// TrustedHops-th address from the right (entries left of it are the
	// client's to write). 0 means 1, at most MaxTrustedHops.
	TrustedHops int
	// TrustedProxies, when set, are the addresses and ranges (CIDR) of the
	// proxies instead: the client is the header's rightmost address outside
	// them, and a request whose connection does not come from one of them
	// is keyed by the connection's address, its header ignored.
	TrustedProxies []string
	// IPv6Prefix is the prefix length IPv6 clients are counted by. 0 means
	// DefaultIPv6Prefix (64); 128 counts each address.
	IPv6Prefix int
	// MaxClients bounds the clients the local store remembers (least
	// recently seen are forgotten). Default 65536.
	MaxClients int
	// Store, when set, holds the counters instead of this process's
	// memory, so gateway replicas share them (a Redis store).
	Store throttled.GCRAStoreCtx
	// StoreTimeout bounds one check against Store; past it the request
	// passes unlimited. 0 means quota.DefaultStoreTimeout.
	StoreTimeout time.Duration
}

// Default per-client quotas.
var (
	DefaultReadQuota  = Quota{N: 200, Per: time.Second}
	DefaultWriteQuota = Quota{N: 50, Per: time.Second}
	DefaultAuthQuota  = Quota{N: 10, Per: time.Minute}
)

// RegisterFlags defines rate-read, rate-write, rate-auth, rate-key-header,
// rate-key-hops, rate-key-proxies and rate-ipv6-prefix, prefixed.
func (c *RateLimits) RegisterFlags(prefix string, fs *flag.FlagSet) {
	c.Read, c.Write, c.Auth = DefaultReadQuota, DefaultWriteQuota, DefaultAuthQuota
	fs.Var(quotaFlag{Q: &c.Read}, prefix+"rate-read", "requests per client for reads (GET, HEAD): N/s, N/m, N/h; 0 turns the limit off")
	fs.Var(quotaFlag{Q: &c.Write}, prefix+"rate-write", "requests per client for writes (POST, PATCH, PUT, DELETE)")
	fs.Var(quotaFlag{Q: &c.Auth}, prefix+"rate-auth", "requests per client that create accounts (POST /api/v1/users) or sign in (POST /api/v1/auth:signIn)")
	fs.StringVar(&c.KeyHeader, prefix+"rate-key-header", "", "header naming the client for rate limits behind a trusted proxy: X-Forwarded-For or Forwarded (read from the right, see --rate-key-hops) or a one-address header such as X-Real-IP; empty: the connection's address")
	fs.IntVar(&c.TrustedHops, prefix+"rate-key-hops", 1, "proxies in front of the gateway that append to --rate-key-header (X-Forwarded-For, Forwarded): the client is that many addresses from the right")
	fs.Func(prefix+"rate-key-proxies", "comma list of the trusted proxies' addresses or CIDR ranges, instead of --rate-key-hops: the client is the header's rightmost address outside them; a connection from elsewhere is keyed by its own address", func(v string) error {
		c.TrustedProxies = nil
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				c.TrustedProxies = append(c.TrustedProxies, p)
			}
		}
		_, err := realclientip.AddressesAndRangesToIPNets(c.TrustedProxies...)
		return err
	})
	fs.IntVar(&c.IPv6Prefix, prefix+"rate-ipv6-prefix", DefaultIPv6Prefix, "prefix length IPv6 clients are counted by (32 to 128; 128: each address)")
}

// limiter is one class's GCRA limiter.
type limiter struct {
	class  string
	quota  Quota
	gcra   *throttled.GCRARateLimiterCtx
	policy string // the RateLimit-Policy header value
}

// rateLimiter applies the classes' limiters to API requests.
type rateLimiter struct {
	byClass     map[string]*limiter
	clients     *clientKeyer
	limited     *prometheus.CounterVec
	storeFailed func(error)   // a check the store did not answer
	timeout     time.Duration // a store check's
}

func newRateLimiter(c RateLimits, reg prometheus.Registerer, log *slog.Logger) (*rateLimiter, error) {
	clients, err := newClientKeyer(c)
	if err != nil {
		return nil, err
	}
	store := c.Store
	if store == nil {
		if c.MaxClients <= 0 {
			c.MaxClients = 65536
		}
		if store, err = memstore.NewCtx(c.MaxClients); err != nil {
			return nil, err
		}
	}
	rl := &rateLimiter{byClass: map[string]*limiter{}, clients: clients,
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_gateway_rate_limited_total",
			Help: "API requests answered 429 by the per-client rate limits, by class (read, write, auth).",
		}, []string{"class"}),
		timeout: cmp.Or(c.StoreTimeout, quota.DefaultStoreTimeout),
	}
	for class, q := range map[string]Quota{ClassRead: c.Read, ClassWrite: c.Write, ClassAuth: c.Auth} {
		rl.limited.WithLabelValues(class)
		if q.N == 0 {
			continue
		}
		g, err := throttled.NewGCRARateLimiterCtx(store, throttled.RateQuota{MaxRate: throttled.PerDuration(q.N, q.Per), MaxBurst: q.N - 1})
		if err != nil {
			return nil, err
		}
		rl.byClass[class] = &limiter{class: class, quota: q, gcra: g,
			policy: fmt.Sprintf("%q;q=%d;w=%d", class, q.N, int(q.Per/time.Second))}
	}
	if err := reg.Register(rl.limited); err != nil {
		return nil, err
	}
	if rl.storeFailed, err = quota.StoreFailures(reg, log, "trellis_gateway_rate_limit_store_errors_total",
		"Rate-limit checks the shared store could not answer; the request was let through.",
		"rate-limit store unavailable; requests pass unlimited"); err != nil {
		return nil, err
	}
	return rl, nil
}

// classOf names the quota a request counts against.
func classOf(r *http.Request) string {
	switch {
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		return ClassRead
	case r.Method == http.MethodPost && (strings.TrimSuffix(r.URL.Path, "/") == "/api/v1/users" || r.URL.Path == "/api/v1/auth:signIn"):
		return ClassAuth
	}
	return ClassWrite
}

// clientKey identifies the client: a signed-in one as its user, else by
// its address (clientKeyer).
func (rl *rateLimiter) clientKey(r *http.Request) string {
	if p := mesh.PrincipalFrom(r.Context()); p != nil && p.Subject != "" {
		return "user:" + p.Subject // a signed-in client is limited as itself, wherever it calls from
	}
	return rl.clients.key(r)
}

// rateLimit answers 429 with Retry-After once a client has used its
// class's quota, and tells every client where it stands with the IETF
// RateLimit-Policy and RateLimit headers. It runs before the body is read.
// A store that cannot answer (Redis down) lets the request through: the
// limits protect the service, they must not take it down.
func (g *Gateway) rateLimit(next http.Handler) http.Handler {
	rl := g.limits
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l := rl.byClass[classOf(r)]
		if l == nil {
			next.ServeHTTP(w, r)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), rl.timeout)
		limited, res, err := l.gcra.RateLimitCtx(ctx, l.class+":"+rl.clientKey(r), 1)
		cancel()
		if err != nil {
			rl.storeFailed(err)
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Set("RateLimit-Policy", l.policy)
		h.Set("RateLimit", fmt.Sprintf("%q;r=%d;t=%d", l.class, max(res.Remaining, 0), ceilSeconds(res.ResetAfter)))
		if !limited {
			next.ServeHTTP(w, r)
			return
		}
		rl.limited.WithLabelValues(l.class).Inc()
		retry := max(ceilSeconds(res.RetryAfter), 1)
		h.Set("Retry-After", strconv.Itoa(retry))
		g.writeStatus(w, http.StatusTooManyRequests, status.Newf(codes.ResourceExhausted,
			"rate limit: %s requests are limited to %s per client; retry after %d s", l.class, l.quota, retry))
	})
}

func ceilSeconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int(math.Ceil(d.Seconds()))
}

// Validate reports limits that cannot work.
func (c *RateLimits) Validate() error { return c.validateKey() }
