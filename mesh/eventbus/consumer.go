package eventbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Delivery is one event as a consumer sees it.
type Delivery struct {
	ID           string // event id (ce-id)
	Subject      string // without the bus prefix, e.g. trellis.user.v1.deleted
	Type         string // payload's protobuf full name
	Time         time.Time
	Data         []byte
	TraceParent  string
	NumDelivered uint64 // 1 on the first delivery
}

// Handler applies an event. It must be idempotent on Delivery.ID (record
// the id in the transaction of the effect); returning an error asks for a
// redelivery later, returning ErrPermanent drops the event.
type Handler func(ctx context.Context, d Delivery) error

// ErrDuplicate is what a handler returns for an event it had already
// applied (a redelivery): the delivery is acknowledged and counted as
// result "duplicate".
var ErrDuplicate = errors.New("eventbus: event already applied")

// ErrPermanent marks an event no retry can apply (e.g. an undecodable
// payload): it is terminated instead of redelivered.
var ErrPermanent = errors.New("eventbus: permanent failure")

// ConsumerConfig describes a durable pull consumer.
type ConsumerConfig struct {
	// Stream is the stream name (without the bus prefix), e.g. TRELLIS_USER.
	Stream string
	// Durable names the consumer; JetStream keeps its position across
	// restarts and shares its messages among replicas.
	Durable string
	// Subjects filters the stream (without the bus prefix).
	Subjects []string
	// MaxDeliver bounds redelivery of a failing event. Default 10.
	MaxDeliver int
	// Backoff is the delay before each redelivery after a failure.
	// Default 100ms, 500ms, 1s, 5s, then 10s.
	Backoff []time.Duration
	// AckWait is how long a delivery may take before JetStream redelivers
	// it. Default 30s.
	AckWait time.Duration
}

func (c ConsumerConfig) withDefaults() ConsumerConfig {
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = 10
	}
	if len(c.Backoff) == 0 {
		c.Backoff = []time.Duration{100 * time.Millisecond, 500 * time.Millisecond, time.Second, 5 * time.Second, 10 * time.Second}
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	return c
}

func (c ConsumerConfig) backoff(attempt uint64) time.Duration {
	i := int(attempt) - 1
	if i >= len(c.Backoff) {
		i = len(c.Backoff) - 1
	}
	return c.Backoff[max(i, 0)]
}

// consumeSpan starts the span of handling d, continuing the trace of the
// change that produced it; without a tracer it is a no-op span.
func (b *Bus) consumeSpan(ctx context.Context, d Delivery, consumer string) (context.Context, trace.Span) {
	if b.cfg.Tracer == nil {
		return ctx, trace.SpanFromContext(ctx)
	}
	ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": d.TraceParent})
	return b.cfg.Tracer.Tracer("github.com/trellis-mesh/trellis/mesh/eventbus").Start(ctx, d.Subject+" process",
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", d.Subject),
			attribute.String("messaging.message.id", d.ID),
			attribute.String("messaging.consumer.group.name", consumer),
		))
}

// Consume starts a durable pull consumer calling h for each event, until
// the returned stop function is called (it waits for the handler in
// flight).
func (b *Bus) Consume(ctx context.Context, cfg ConsumerConfig, h Handler, log *slog.Logger, m *Metrics) (stop func(), err error) {
	cfg = cfg.withDefaults()
	filters := make([]string, len(cfg.Subjects))
	for i, s := range cfg.Subjects {
		filters[i] = b.Subject(s)
	}
	cc := jetstream.ConsumerConfig{
		Durable:       cfg.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    cfg.MaxDeliver,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: 1024,
	}
	if len(filters) == 1 {
		cc.FilterSubject = filters[0] // understood by servers older than 2.10
	} else {
		cc.FilterSubjects = filters
	}
	cons, err := b.js.CreateOrUpdateConsumer(ctx, b.StreamName(cfg.Stream), cc)
	if err != nil {
		return nil, fmt.Errorf("eventbus: consumer %s: %w", cfg.Durable, err)
	}
	handled := func(result string) { m.handled.WithLabelValues(cfg.Durable, result).Inc() }
	for _, result := range []string{"ok", "duplicate", "retry", "dropped"} {
		m.handled.WithLabelValues(cfg.Durable, result) // series exist from the start
	}
	m.redelivered.WithLabelValues(cfg.Durable)
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	consumeCtx, err := cons.Consume(func(msg jetstream.Msg) {
		meta, err := msg.Metadata()
		if err != nil {
			_ = msg.Term()
			return
		}
		if meta.NumDelivered > 1 {
			m.redelivered.WithLabelValues(cfg.Durable).Inc()
		}
		d := Delivery{
			ID: msg.Headers().Get(HeaderID), Subject: msg.Subject()[len(b.cfg.Prefix):],
			Type: msg.Headers().Get(HeaderType), Data: msg.Data(),
			TraceParent: msg.Headers().Get(HeaderTraceParent), NumDelivered: meta.NumDelivered,
		}
		d.Time, _ = time.Parse(time.RFC3339Nano, msg.Headers().Get(HeaderTime))
		if d.ID == "" {
			d.ID = msg.Headers().Get("Nats-Msg-Id")
		}
		ctx, span := b.consumeSpan(hctx, d, cfg.Durable)
		err = h(ctx, d)
		if err != nil && !errors.Is(err, ErrDuplicate) {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
		switch {
		case err == nil:
			handled("ok")
			_ = msg.Ack()
		case errors.Is(err, ErrDuplicate):
			handled("duplicate")
			_ = msg.Ack()
		case errors.Is(err, ErrPermanent):
			handled("dropped")
			log.Error("event dropped: cannot be applied", "consumer", cfg.Durable, "event_id", d.ID, "subject", d.Subject, "error", err.Error())
			_ = msg.Term()
		case int(meta.NumDelivered) >= cfg.MaxDeliver:
			handled("dropped")
			log.Error("event dropped after max deliveries", "consumer", cfg.Durable, "event_id", d.ID, "subject", d.Subject, "deliveries", meta.NumDelivered, "error", err.Error())
			_ = msg.Term()
		default:
			handled("retry")
			log.Warn("event handling failed, will retry", "consumer", cfg.Durable, "event_id", d.ID, "subject", d.Subject, "delivery", meta.NumDelivered, "error", err.Error())
			_ = msg.NakWithDelay(cfg.backoff(meta.NumDelivered))
		}
	}, jetstream.PullMaxMessages(64))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("eventbus: consume %s: %w", cfg.Durable, err)
	}
	return func() {
		consumeCtx.Stop()
		<-consumeCtx.Closed()
		cancel()
	}, nil
}

// RunConsumer keeps a durable consumer running until ctx ends: it makes
// sure the stream exists (with streamSubjects; "" when the stream is not
// this consumer's to create, and it waits for it), starts the consumer, and
// while NATS cannot be reached retries both with backoff (up to 5 s), so
// the service it feeds runs — and serves — while NATS is down.
func (b *Bus) RunConsumer(ctx context.Context, cfg ConsumerConfig, streamSubjects string, h Handler, log *slog.Logger, m *Metrics) {
	wait := backoff{max: 5 * time.Second}
	for {
		var err error
		if streamSubjects != "" {
			err = b.EnsureStream(ctx, cfg.Stream, streamSubjects)
		}
		var stop func()
		if err == nil {
			stop, err = b.Consume(ctx, cfg, h, log, m)
		}
		if err == nil {
			<-ctx.Done()
			stop()
			return
		}
		d := wait.next()
		log.Warn("event consumer not started, retrying", "consumer", cfg.Durable, "error", err.Error(), "backoff", d.String())
		if !sleep(ctx, d) {
			return
		}
	}
}
