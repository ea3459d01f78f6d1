package mesh

import (
	"bytes"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	protov2 "google.golang.org/protobuf/proto"
)

// malformedMark is what serverCodec leaves in a request it could not
// decode: an unknown field with the highest valid number. gRPC decodes a
// unary request before any interceptor runs and answers a decoding failure
// itself, as INTERNAL with the parser's text ("grpc: failed to unmarshal
// the received message: proto: cannot parse invalid wire-format data"), a
// server fault by its code. Marking the message instead lets the mesh chain
// answer it, with a request id, as the caller's mistake.
var malformedMark = protowire.AppendString(
	protowire.AppendTag(nil, protowire.MaxValidNumber, protowire.BytesType), "trellis: malformed request")

// serverCodec is gRPC's protobuf codec, except that a request that is not
// valid protobuf (truncated, bad wire types, invalid UTF-8 in a string)
// decodes to an empty message carrying malformedMark.
type serverCodec struct{ encoding.CodecV2 }

func newServerCodec() serverCodec { return serverCodec{encoding.GetCodecV2(proto.Name)} }

func (c serverCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(protov2.Message)
	if !ok {
		return err
	}
	protov2.Reset(m)
	m.ProtoReflect().SetUnknown(malformedMark)
	return nil
}

// malformed reports whether serverCodec could not decode req.
func malformed(req any) bool {
	m, ok := req.(protov2.Message)
	if !ok {
		return false
	}
	u := m.ProtoReflect().GetUnknown()
	return len(u) == len(malformedMark) && bytes.Equal(u, malformedMark)
}
