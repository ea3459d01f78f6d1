// Package eventbus carries domain events from a service's database to NATS
// JetStream and from JetStream to consumers, with the guarantees Trellis
// makes: every committed change publishes its event at least once (the
// event is written to an outbox table in the change's own transaction and
// published by a Relay that marks it sent only after JetStream's ack), no
// rolled-back change publishes anything, and JetStream deduplicates
// republished events by their id (Nats-Msg-Id) within the duplicate
// window. Consumers get durable, explicitly acknowledged deliveries with
// bounded redelivery; making each effect happen once is the consumer's
// transaction's job (record the event id with the effect).
package eventbus

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// Event is a domain event on its way through the outbox.
type Event struct {
	// ID is a UUIDv7; it is the Nats-Msg-Id (JetStream deduplication) and
	// the CloudEvents ce-id.
	ID string
	// Subject is the NATS subject, e.g. trellis.user.v1.created.
	Subject string
	// AggregateID names the entity the event is about (a user or order
	// id); events of one aggregate are published in commit order.
	AggregateID string
	// Type is the payload's protobuf full name (ce-type), e.g.
	// trellis.events.v1.UserCreated: enough to decode it.
	Type string
	// Source is the CloudEvents source, e.g. /trellis/user.
	Source string
	// Time is when the change happened (ce-time).
	Time time.Time
	// Payload is the protobuf encoding of the event message.
	Payload []byte
	// TraceParent is the W3C trace context of the request that made the
	// change, carried to consumers.
	TraceParent string
}

// NewEvent builds an event for payload, taking the trace context from the
// incoming request in ctx.
func NewEvent(ctx context.Context, subject, source, aggregateID string, payload proto.Message, at time.Time) (Event, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return Event{}, err
	}
	b, err := proto.Marshal(payload)
	if err != nil {
		return Event{}, fmt.Errorf("eventbus: marshal %s: %w", subject, err)
	}
	ev := Event{
		ID: id.String(), Subject: subject, AggregateID: aggregateID,
		Type: string(payload.ProtoReflect().Descriptor().FullName()), Source: source,
		Time: at.UTC(), Payload: b,
	}
	ev.TraceParent = traceParent(ctx)
	return ev, nil
}

// traceParent is the W3C trace context to store with an event: the
// current span's (the RPC that makes the change, when tracing is on), else
// the one the request arrived with.
func traceParent(ctx context.Context) string {
	if trace.SpanContextFromContext(ctx).IsValid() {
		carrier := propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, carrier)
		return carrier.Get("traceparent")
	}
	if tp := metadata.ValueFromIncomingContext(ctx, "traceparent"); len(tp) > 0 {
		return tp[0]
	}
	return ""
}

// Header names carried on every message.
const (
	HeaderSpecVersion = "ce-specversion"
	HeaderID          = "ce-id"
	HeaderType        = "ce-type"
	HeaderSource      = "ce-source"
	HeaderTime        = "ce-time"
	HeaderSubject     = "ce-subject"
	HeaderTraceParent = "traceparent"
)

// message renders ev as a NATS message with CloudEvents-style headers.
// Nats-Msg-Id is set by the publish option.
func message(subject string, ev Event) *nats.Msg {
	h := nats.Header{}
	h.Set(HeaderSpecVersion, "1.0")
	h.Set(HeaderID, ev.ID)
	h.Set(HeaderType, ev.Type)
	h.Set(HeaderSource, ev.Source)
	h.Set(HeaderTime, ev.Time.Format(time.RFC3339Nano))
	h.Set(HeaderSubject, ev.AggregateID)
	h.Set("content-type", "application/protobuf")
	if ev.TraceParent != "" {
		h.Set(HeaderTraceParent, ev.TraceParent)
	}
	return &nats.Msg{Subject: subject, Header: h, Data: ev.Payload}
}
