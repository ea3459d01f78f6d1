// Package event is the envelope of a Trellis domain event: what a use case
// writes to the outbox in its transaction and the relay publishes. It
// knows nothing of NATS or gRPC; the trace context it carries is passed in
// (mesh.TraceParent reads it from a call's context).
package event

import (
	"fmt"
	"time"

	"github.com/google/uuid"
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
	// change, carried to consumers ("" when there is none).
	TraceParent string
}

// New builds an event for payload about aggregateID, made at time at by
// the request whose W3C trace context is traceParent.
func New(traceParent, subject, source, aggregateID string, payload proto.Message, at time.Time) (Event, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return Event{}, err
	}
	b, err := proto.Marshal(payload)
	if err != nil {
		return Event{}, fmt.Errorf("event: marshal %s: %w", subject, err)
	}
	return Event{
		ID: id.String(), Subject: subject, AggregateID: aggregateID,
		Type: string(payload.ProtoReflect().Descriptor().FullName()), Source: source,
		Time: at.UTC(), Payload: b, TraceParent: traceParent,
	}, nil
}
