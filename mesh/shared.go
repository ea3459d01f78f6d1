package mesh

import (
	"context"
	"log/slog"
	"sync"
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
// short timeout); every other call reads the copy. State changes are
// written by a short-lived goroutine (publish); none is left running.
type sharedOpen struct {
	store      SharedBreakerState
	key        string
	every      time.Duration
	log        *slog.Logger
	until      atomic.Int64 // unix nanos; 0 = closed
	next       atomic.Int64 // unix nanos of the next refresh
	refreshing atomic.Bool
	failing    atomic.Bool

	mu      sync.Mutex // guards want and writing
	want    pendingState
	writing bool // a goroutine is writing want to the store
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

// publish records a local state change for the other replicas. The
// copy in memory changes at once; the store is written by a goroutine of
// its own, never by the caller: gobreaker reports a state change under
// its lock, and a write to an unreachable store (up to its 500 ms bound)
// would hold every call through the breaker meanwhile. Writes are
// coalesced and kept in order — one writer at a time, writing the latest
// state until none is newer — and the writer ends when it has written it.
func (s *sharedOpen) publish(open bool, until time.Time) {
	if open {
		s.until.Store(until.UnixNano())
	} else {
		s.until.Store(0)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.want = pendingState{open: open, until: until, seq: s.want.seq + 1}
	if s.writing {
		return // the running writer picks it up
	}
	s.writing = true
	go s.write()
}

// pendingState is a state publish asked to be written; seq tells a newer
// one from the one being written.
type pendingState struct {
	open  bool
	until time.Time
	seq   uint64
}

// write writes the latest published state to the store, again while a
// newer one arrived during the write.
func (s *sharedOpen) write() {
	for {
		s.mu.Lock()
		w := s.want
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		if w.open {
			_ = s.store.MarkOpen(ctx, s.key, w.until)
		} else {
			_ = s.store.MarkClosed(ctx, s.key)
		}
		cancel()
		s.mu.Lock()
		if s.want.seq == w.seq {
			s.writing = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}
