package user

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/throttled/throttled/v2"
	"github.com/throttled/throttled/v2/store/memstore"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/trellis-mesh/trellis/internal/quota"
)

// DefaultSignInQuota is how many failed sign-ins an account takes before
// further attempts wait (GCRA: 10 at once, then one per 6 s). Slows
// password guessing against one account from any number of addresses;
// the gateway's auth class limits each address across accounts.
var DefaultSignInQuota = quota.Quota{N: 10, Per: time.Minute}

// maxLimitedAccounts bounds the accounts an in-process limiter remembers
// (least recently seen forgotten).
const maxLimitedAccounts = 65536

// signInLimiter counts failed sign-ins per account (the email key, known
// or not: a limit that only existing accounts had would tell them apart).
// Only failures count; a check consumes nothing. A store that cannot
// answer lets the attempt through, as the gateway's limits do.
type signInLimiter struct {
	gcra     *throttled.GCRARateLimiterCtx
	quota    quota.Quota
	timeout  time.Duration // a store check's
	storeErr func(error)   // told when the store did not answer
}

// newSignInLimiter builds the limit auth (withDefaults applied) sets.
func newSignInLimiter(auth AuthConfig) (*signInLimiter, error) {
	q, store := auth.SignInQuota, auth.SignInStore
	if q.N == 0 {
		return nil, nil
	}
	if store == nil {
		var err error
		if store, err = memstore.NewCtx(maxLimitedAccounts); err != nil {
			return nil, err
		}
	}
	g, err := throttled.NewGCRARateLimiterCtx(store, throttled.RateQuota{MaxRate: throttled.PerDuration(q.N, q.Per), MaxBurst: q.N - 1})
	if err != nil {
		return nil, err
	}
	return &signInLimiter{gcra: g, quota: q, timeout: auth.SignInStoreTimeout, storeErr: auth.SignInStoreFailed}, nil
}

// check refuses an attempt on an account whose failures used its quota.
func (l *signInLimiter) check(ctx context.Context, key string) error {
	if l == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	// Quantity 0 asks without taking: RetryAfter is when one more would
	// be allowed, negative when it is now.
	_, res, err := l.gcra.RateLimitCtx(ctx, "signin:"+key, 0)
	if err != nil {
		if !errors.Is(ctx.Err(), context.Canceled) { // not the caller hanging up: the store did not answer
			l.storeErr(err)
		}
		return nil
	}
	if res.RetryAfter < 0 {
		return nil
	}
	retry := max(time.Duration(math.Ceil(res.RetryAfter.Seconds()))*time.Second, time.Second)
	st, _ := status.New(codes.ResourceExhausted, fmt.Sprintf("too many failed sign-ins for this account: at most %s; retry after %d s", l.quota, int(retry.Seconds()))).
		WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	return st.Err()
}

// failed counts a failed attempt.
func (l *signInLimiter) failed(ctx context.Context, key string) {
	if l == nil {
		return
	}
	// A caller that hangs up once its attempt failed must not keep the
	// failure from being counted.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.timeout)
	defer cancel()
	if _, _, err := l.gcra.RateLimitCtx(ctx, "signin:"+key, 1); err != nil {
		l.storeErr(err)
	}
}
