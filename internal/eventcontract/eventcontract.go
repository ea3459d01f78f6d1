// Package eventcontract reads the routing of Trellis's domain events —
// which subject each payload is published on, which JetStream stream keeps
// it — from the options on the payload messages in
// proto/trellis/events/v1, so the contract is declared once, beside the
// payloads, and every publisher, consumer and stream is set up from it.
package eventcontract

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
)

// Route is where one event type goes.
type Route struct {
	Type    protoreflect.FullName // the payload's full name: the ce-type header
	Subject string                // e.g. trellis.user.v1.created
	Stream  string                // e.g. TRELLIS_USER
}

func routeOf(md protoreflect.MessageDescriptor) (Route, bool) {
	opts := md.Options()
	subject, _ := proto.GetExtension(opts, eventsv1.E_Subject).(string)
	stream, _ := proto.GetExtension(opts, eventsv1.E_Stream).(string)
	return Route{Type: md.FullName(), Subject: subject, Stream: stream}, subject != "" && stream != ""
}

// Of returns the route of an event payload. A payload without one is a
// bug in the contract (the contract test catches it), so Of panics.
func Of(m proto.Message) Route {
	r, ok := routeOf(m.ProtoReflect().Descriptor())
	if !ok {
		panic(fmt.Sprintf("eventcontract: %s declares no subject and stream", m.ProtoReflect().Descriptor().FullName()))
	}
	return r
}

// Routes returns the route of every event of the contract.
func Routes() []Route {
	var out []Route
	msgs := eventsv1.File_trellis_events_v1_events_proto.Messages()
	for i := range msgs.Len() {
		if r, ok := routeOf(msgs.Get(i)); ok {
			out = append(out, r)
		}
	}
	return out
}

// StreamSubjects is the subject filter of a stream: its events' subjects
// with the last token a wildcard (trellis.user.v1.>).
func StreamSubjects(stream string) string {
	for _, r := range Routes() {
		if r.Stream == stream {
			return r.Subject[:strings.LastIndexByte(r.Subject, '.')] + ".>"
		}
	}
	return ""
}

// Decode decodes a delivered event by its ce-type and checks that it came
// on the subject the contract gives that type: an event of one type on
// another type's subject is refused, whatever the publisher meant.
func Decode(typ, subject string, data []byte) (proto.Message, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(typ))
	if err != nil {
		return nil, fmt.Errorf("unknown event type %q", typ)
	}
	r, ok := routeOf(mt.Descriptor())
	if !ok || r.Subject != subject {
		return nil, fmt.Errorf("event type %q does not belong on subject %q", typ, subject)
	}
	m := mt.New().Interface()
	if err := proto.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("decode %s: %w", typ, err)
	}
	return m, nil
}
