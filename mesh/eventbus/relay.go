package eventbus

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/event"
)

// Outbox is the relay's view of a service's outbox table.
type Outbox interface {
	// Pending returns up to limit unsent events in commit order.
	Pending(ctx context.Context, limit int) ([]event.Event, error)
	// MarkSent records that JetStream acknowledged the events.
	MarkSent(ctx context.Context, ids []string, at time.Time) error
	// CountPending returns how many events are unsent.
	CountPending(ctx context.Context) (int64, error)
	// Prune deletes events sent before the given time.
	Prune(ctx context.Context, sentBefore time.Time) (int64, error)
	// AcquireLease makes holder the only relay of the outbox until
	// now+ttl, if no other holder's lease is still valid.
	AcquireLease(ctx context.Context, holder string, ttl time.Duration, now time.Time) (bool, error)
}

// RelayConfig tunes a Relay. Zero fields take the defaults on each field.
type RelayConfig struct {
	// Service labels metrics and logs ("user").
	Service string
	// Batch is how many events one pass publishes at most. Default 256.
	Batch int
	// Poll is how often the outbox is checked when nobody calls Notify.
	// Default 500ms.
	Poll time.Duration
	// LeaseTTL bounds how long a crashed replica's lease blocks the others.
	// Default 10s.
	LeaseTTL time.Duration
	// Retention keeps sent rows this long before pruning. Default 24h.
	Retention time.Duration
	// MaxBackoff caps the wait between failed passes. Default 5s.
	MaxBackoff time.Duration
	// AckTimeout bounds the wait for JetStream's acks of a batch.
	// Default 5s.
	AckTimeout time.Duration
	// Prepare runs before the first publish, and again until it succeeds
	// (e.g. creating the stream while NATS is still down). Optional.
	Prepare func(ctx context.Context) error
}

// DefaultRetention is how long sent outbox rows are kept unless configured.
const DefaultRetention = 24 * time.Hour

// RegisterFlags defines outbox-retention, prefixed.
func (c *RelayConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.DurationVar(&c.Retention, prefix+"outbox-retention", DefaultRetention, "how long sent outbox rows are kept before pruning")
}

// Validate reports settings that cannot work.
func (c *RelayConfig) Validate() error {
	if c.Retention <= 0 {
		return errors.New("--outbox-retention must be positive")
	}
	return nil
}

func (c RelayConfig) withDefaults() RelayConfig {
	if c.Batch <= 0 {
		c.Batch = 256
	}
	if c.Poll <= 0 {
		c.Poll = 500 * time.Millisecond
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 10 * time.Second
	}
	if c.Retention <= 0 {
		c.Retention = DefaultRetention
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Second
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = 5 * time.Second
	}
	return c
}

// Relay publishes a service's outbox to JetStream: in commit order, in
// async batches, marking rows sent only after their ack. While NATS (or
// the database) is down it retries with exponential backoff; with several
// replicas, a lease in the database lets one relay publish at a time, so
// the order of events is the order of commits.
type Relay struct {
	bus      *Bus
	outbox   Outbox
	cfg      RelayConfig
	log      *slog.Logger
	m        *Metrics
	holder   string
	notify   chan struct{}
	now      func() time.Time
	prepared bool
}

// NewRelay returns a relay of outbox onto bus.
func NewRelay(bus *Bus, outbox Outbox, cfg RelayConfig, log *slog.Logger, m *Metrics) *Relay {
	cfg = cfg.withDefaults()
	for _, c := range []interface {
		WithLabelValues(...string) prometheus.Counter
	}{m.published, m.errors} {
		c.WithLabelValues(cfg.Service) // series exist from the start
	}
	m.pending.WithLabelValues(cfg.Service)
	return &Relay{
		bus: bus, outbox: outbox, cfg: cfg, log: log, m: m,
		holder: uuid.NewString(), notify: make(chan struct{}, 1), now: time.Now,
	}
}

// Notify wakes the relay: a transaction with events just committed.
func (r *Relay) Notify() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// Run relays until ctx ends.
func (r *Relay) Run(ctx context.Context) {
	wait := backoff{max: r.cfg.MaxBackoff}
	lastPrune := time.Time{}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-r.notify:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		if wait.cur > 0 { // a notification does not cut a backoff short
			if !sleep(ctx, wait.cur) {
				return
			}
		}
		n, err := r.Flush(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			r.m.errors.WithLabelValues(r.cfg.Service).Inc()
			d := wait.next()
			r.log.Warn("outbox relay: pass failed, backing off", "service", r.cfg.Service, "error", err.Error(), "backoff", d.String())
		default:
			wait.reset()
		}
		if r.now().Sub(lastPrune) > time.Minute {
			if pruned, err := r.outbox.Prune(ctx, r.now().Add(-r.cfg.Retention)); err == nil {
				lastPrune = r.now()
				if pruned > 0 {
					r.log.Debug("outbox relay: pruned sent events", "service", r.cfg.Service, "rows", pruned)
				}
			}
		}
		if pending, err := r.outbox.CountPending(ctx); err == nil {
			r.m.pending.WithLabelValues(r.cfg.Service).Set(float64(pending))
		}
		next := r.cfg.Poll
		if n == r.cfg.Batch && err == nil {
			next = 0 // a full batch: more are waiting
		}
		timer.Reset(next)
	}
}

// ErrNotLeader is returned by Flush when another replica holds the lease.
var ErrNotLeader = errors.New("eventbus: another relay holds the outbox lease")

// Flush publishes one batch of pending events and returns how many were
// acknowledged and marked sent.
func (r *Relay) Flush(ctx context.Context) (int, error) {
	if !r.prepared && r.cfg.Prepare != nil {
		if err := r.cfg.Prepare(ctx); err != nil {
			return 0, fmt.Errorf("prepare: %w", err)
		}
	}
	r.prepared = true
	ok, err := r.outbox.AcquireLease(ctx, r.holder, r.cfg.LeaseTTL, r.now())
	if err != nil {
		return 0, fmt.Errorf("lease: %w", err)
	}
	if !ok {
		return 0, nil // another replica relays; poll again later
	}
	events, err := r.outbox.Pending(ctx, r.cfg.Batch)
	if err != nil || len(events) == 0 {
		return 0, err
	}
	acked, pubErr := r.publish(ctx, events)
	if acked > 0 {
		ids := make([]string, acked)
		now := r.now()
		for i, ev := range events[:acked] {
			ids[i] = ev.ID
			r.m.lag.WithLabelValues(r.cfg.Service).Observe(now.Sub(ev.Time).Seconds())
		}
		// A crash here republishes these events on restart; JetStream
		// drops them as duplicates (same Nats-Msg-Id).
		if err := r.outbox.MarkSent(ctx, ids, now); err != nil {
			return 0, fmt.Errorf("mark sent: %w", err)
		}
		r.m.published.WithLabelValues(r.cfg.Service).Add(float64(acked))
	}
	return acked, pubErr
}

// publish sends events asynchronously (pipelined on one connection, so
// in order) and waits for their acks. It returns the length of the acked
// prefix: after the first failure nothing later is marked, so per-aggregate
// order survives a partial failure.
func (r *Relay) publish(ctx context.Context, events []event.Event) (int, error) {
	futures := make([]jetstream.PubAckFuture, 0, len(events))
	var sendErr error
	for _, ev := range events {
		f, err := r.bus.js.PublishMsgAsync(message(r.bus.Subject(ev.Subject), ev), jetstream.WithMsgID(ev.ID))
		if err != nil {
			sendErr = err
			break
		}
		futures = append(futures, f)
	}
	timeout := time.NewTimer(r.cfg.AckTimeout)
	defer timeout.Stop()
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return i, fmt.Errorf("publish %s: %w", events[i].Subject, err)
		case <-timeout.C:
			return i, errors.New("publish: timed out waiting for JetStream acks")
		case <-ctx.Done():
			return i, ctx.Err()
		}
	}
	if sendErr != nil {
		return len(futures), fmt.Errorf("publish: %w", sendErr)
	}
	return len(futures), nil
}
