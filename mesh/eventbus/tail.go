package eventbus

import (
	"encoding/json"
	"strings"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// tailLine is one event as `trellis events tail` prints it.
type tailLine struct {
	Subject     string          `json:"subject"`
	ID          string          `json:"id"`
	Type        string          `json:"type"`
	Source      string          `json:"source,omitempty"`
	Time        string          `json:"time,omitempty"`
	Aggregate   string          `json:"aggregate,omitempty"`
	TraceParent string          `json:"traceparent,omitempty"`
	Data        json.RawMessage `json:"data"`
}

// FormatJSON renders a message as one JSON line for people debugging: the
// CloudEvents headers and the payload decoded by its ce-type (any
// registered protobuf message, e.g. trellis.events.v1.UserCreated).
func FormatJSON(msg *nats.Msg, prefix string) ([]byte, error) {
	line := tailLine{
		Subject: strings.TrimPrefix(msg.Subject, prefix), ID: msg.Header.Get(HeaderID), Type: msg.Header.Get(HeaderType),
		Source: msg.Header.Get(HeaderSource), Time: msg.Header.Get(HeaderTime), Aggregate: msg.Header.Get(HeaderSubject),
		TraceParent: msg.Header.Get(HeaderTraceParent),
	}
	line.Data = undecoded(msg.Data)
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(line.Type)); err == nil {
		m := mt.New().Interface()
		if proto.Unmarshal(msg.Data, m) == nil {
			if b, err := protojson.Marshal(m); err == nil {
				line.Data = b
			}
		}
	}
	return json.Marshal(line)
}

// undecoded shows a payload whose type is unknown as base64.
func undecoded(b []byte) json.RawMessage {
	q, _ := json.Marshal(map[string][]byte{"raw": b})
	return q
}

// Match reports whether subject matches the NATS pattern (with * and >).
func Match(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		switch {
		case tok == ">":
			return len(s) > i
		case i >= len(s):
			return false
		case tok != "*" && tok != s[i]:
			return false
		}
	}
	return len(p) == len(s)
}
