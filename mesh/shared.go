package mesh

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// SharedBreakerState lets the replicas of a caller share an upstream's
// breaker: when one replica's breaker opens, the others treat the upstream
// as open too until the open period ends, so they stop sending traffic
// together instead of each paying for its own failures.
//
// Why not gobreaker v2's DistributedCircuitBreaker: its Execute holds a
// mutex in the shared store for the whole upstream call (lock, call,
// write state, unlock) and retries a taken lock after 500 ms, which
// serialises every call of every replica through one Redis key. Sharing
// only the open state keeps calls concurrent and costs no Redis round trip
// per call: one call in each refresh interval reads it, the others use
// the copy in memory. The Redis implementation is mesh/redisbreaker, its
// own package so that the mesh core links no Redis client.
type SharedBreakerState interface {
	// MarkOpen marks the upstream open for every replica until until.
	MarkOpen(ctx context.Context, upstream string, until time.Time) error
	// MarkClosed marks it closed (a replica's trial calls succeeded).
	MarkClosed(ctx context.Context, upstream string) error
	// OpenUntil returns when the shared open state ends (zero: closed).
	OpenUntil(ctx context.Context, upstream string) (time.Time, error)
}

// sharedOpen mirrors the shared state of one upstream in memory. The
// first call after each refresh interval reads the store (bounded by a
// short timeout); every other call reads the copy. No goroutine is left
// running.
type sharedOpen struct {
	store      SharedBreakerState
	key        string
	every      time.Duration
	log        *slog.Logger
	until      atomic.Int64 // unix nanos; 0 = closed
	next       atomic.Int64 // unix nanos of the next refresh
	refreshing atomic.Bool
	failing    atomic.Bool
}

func newSharedOpen(store SharedBreakerState, key string, every time.Duration, log *slog.Logger) *sharedOpen {
	return &sharedOpen{store: store, key: key, every: every, log: log}
}

// isOpen reports whether a replica holds the upstream open now.
func (s *sharedOpen) isOpen() bool {
	now := time.Now().UnixNano()
	if now >= s.next.Load() && s.refreshing.CompareAndSwap(false, true) {
		s.refresh()
		s.next.Store(time.Now().Add(s.every).UnixNano())
		s.refreshing.Store(false)
	}
	u := s.until.Load()
	return u != 0 && now < u
}

func (s *sharedOpen) refresh() {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	until, err := s.store.OpenUntil(ctx, s.key)
	if err != nil {
		if !s.failing.Swap(true) {
			s.log.Warn("shared breaker state unreachable; using the local breaker only", "key", s.key, "error", err.Error())
		}
		return
	}
	if s.failing.Swap(false) {
		s.log.Info("shared breaker state reachable again", "key", s.key)
	}
	s.until.Store(until.UnixNano())
	if until.IsZero() {
		s.until.Store(0)
	}
}

// publish records a local state change for the other replicas.
func (s *sharedOpen) publish(open bool, until time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if open {
		s.until.Store(until.UnixNano())
		_ = s.store.MarkOpen(ctx, s.key, until)
		return
	}
	s.until.Store(0)
	_ = s.store.MarkClosed(ctx, s.key)
}
