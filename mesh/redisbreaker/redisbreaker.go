// Package redisbreaker keeps the mesh's shared circuit-breaker state in
// Redis (mesh.SharedBreakerState): the replicas of a caller open and close
// their breaker on an upstream together. It is its own package so that a
// service using mesh links no Redis client unless it asks for this.
package redisbreaker

import (
	"cmp"
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/trellis-mesh/trellis/internal/quota"
	"github.com/trellis-mesh/trellis/mesh"
)

var _ mesh.SharedBreakerState = (*State)(nil)

// State keeps shared breaker state in Redis: one key per
// upstream, expiring with the open period.
type State struct {
	client *redis.Client
	prefix string
}

// New connects to Redis at url (redis://host:6379/0).
// prefix namespaces the keys (several installations, or tests, on one
// Redis). timeout bounds a dial, read or write (0:
// quota.DefaultStoreTimeout, as --redis-timeout's default).
func New(url, prefix string, timeout time.Duration) (*State, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	// The mesh bounds every read and write with its context (a breaker
	// state read on the call path gets 50 ms): go-redis honours a
	// context's deadline only with ContextTimeoutEnabled — without it a
	// read from an unreachable Redis waited its ReadTimeout, 500 ms
	// (chaos-cluster, Redis partitioned: orders held past the gateway's
	// 1 s). No retries: the state is read again at the next refresh.
	timeout = cmp.Or(timeout, quota.DefaultStoreTimeout)
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = timeout, timeout, timeout
	opts.ContextTimeoutEnabled, opts.MaxRetries = true, -1
	return &State{client: redis.NewClient(opts), prefix: prefix + "trellis:breaker:"}, nil
}

// Close releases the Redis connections.
func (r *State) Close() error { return r.client.Close() }

// MarkOpen implements mesh.SharedBreakerState.
func (r *State) MarkOpen(ctx context.Context, upstream string, until time.Time) error {
	ttl := time.Until(until)
	if ttl <= 0 {
		return nil
	}
	return r.client.Set(ctx, r.prefix+upstream, until.UnixMilli(), ttl).Err()
}

// MarkClosed implements mesh.SharedBreakerState.
func (r *State) MarkClosed(ctx context.Context, upstream string) error {
	return r.client.Del(ctx, r.prefix+upstream).Err()
}

// OpenUntil implements mesh.SharedBreakerState.
func (r *State) OpenUntil(ctx context.Context, upstream string) (time.Time, error) {
	ms, err := r.client.Get(ctx, r.prefix+upstream).Int64()
	if err == redis.Nil {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(ms), nil
}
