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
	"time"

	"github.com/nats-io/nats.go"

	"github.com/trellis-mesh/trellis/internal/event"
)

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
func message(subject string, ev event.Event) *nats.Msg {
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
