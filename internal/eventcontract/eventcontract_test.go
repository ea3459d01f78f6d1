package eventcontract_test

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	"github.com/trellis-mesh/trellis/internal/eventcontract"
)

// TestEveryEventIsRouted: every payload in events.proto declares a
// subject and a stream, subjects are unique, and the subjects of one
// stream differ only in their last token (the stream's filter covers
// exactly them).
func TestEveryEventIsRouted(t *testing.T) {
	t.Parallel()
	msgs := eventsv1.File_trellis_events_v1_events_proto.Messages()
	routes := eventcontract.Routes()
	if len(routes) != msgs.Len() {
		t.Fatalf("%d of %d event messages declare a route", len(routes), msgs.Len())
	}
	seen := map[string]bool{}
	for _, r := range routes {
		if seen[r.Subject] {
			t.Errorf("subject %s used twice", r.Subject)
		}
		seen[r.Subject] = true
		filter := eventcontract.StreamSubjects(r.Stream)
		if !strings.HasSuffix(filter, ".>") || !strings.HasPrefix(r.Subject, strings.TrimSuffix(filter, ">")) {
			t.Errorf("%s: subject %s outside its stream %s's filter %s", r.Type, r.Subject, r.Stream, filter)
		}
	}
	if got := eventcontract.Of(&eventsv1.UserDeleted{}); got.Subject != "trellis.user.v1.deleted" || got.Stream != "TRELLIS_USER" {
		t.Errorf("UserDeleted routes to %+v", got)
	}
}

// TestDecodeRefusesATypeOnAnotherTypesSubject: a UserCreated payload sent
// on the deleted subject is refused, as are unknown types and bytes that
// are not the type.
func TestDecodeRefusesATypeOnAnotherTypesSubject(t *testing.T) {
	t.Parallel()
	b, _ := proto.Marshal(&eventsv1.UserCreated{UserId: "u"})
	if m, err := eventcontract.Decode("trellis.events.v1.UserCreated", "trellis.user.v1.created", b); err != nil || m.(*eventsv1.UserCreated).GetUserId() != "u" {
		t.Fatalf("a valid event: %v, %v", m, err)
	}
	for name, c := range map[string][3]string{
		"type on another type's subject": {"trellis.events.v1.UserCreated", "trellis.user.v1.deleted", string(b)},
		"unknown type":                   {"trellis.events.v1.Nope", "trellis.user.v1.created", string(b)},
		"not an event type":              {"google.protobuf.Timestamp", "trellis.user.v1.created", string(b)},
		"bytes that are not the type":    {"trellis.events.v1.UserCreated", "trellis.user.v1.created", "\x0a\xff"},
	} {
		if _, err := eventcontract.Decode(c[0], c[1], []byte(c[2])); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
