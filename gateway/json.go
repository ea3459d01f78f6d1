package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
)

// strictJSON renders and parses JSON like protojson with lowerCamelCase
// names; unknown fields in a request body are an error, not ignored, and so
// is anything after the one JSON value a body may hold ({"a":1}{"b":2} or
// {"a":1}garbage would otherwise be read as its first value).
type strictJSON struct{ runtime.JSONPb }

var marshaler = &strictJSON{runtime.JSONPb{
	MarshalOptions:   protojson.MarshalOptions{},
	UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
}}

// errTrailingData is what a body with more than one JSON value gets.
var errTrailingData = errors.New("invalid JSON body: unexpected data after the JSON value")

// NewDecoder reads the whole body (already bounded by MaxBodyBytes) and
// checks it is one JSON value before protojson decodes it.
func (s *strictJSON) NewDecoder(r io.Reader) runtime.Decoder {
	b, err := io.ReadAll(r)
	if err != nil {
		return runtime.DecoderFunc(func(any) error { return err })
	}
	d := json.NewDecoder(bytes.NewReader(b))
	var first json.RawMessage
	if err := d.Decode(&first); err == nil {
		if err := d.Decode(new(json.RawMessage)); err != io.EOF {
			return runtime.DecoderFunc(func(any) error { return errTrailingData })
		}
	}
	return s.JSONPb.NewDecoder(bytes.NewReader(b))
}
