package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
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

// NewDecoder decodes like JSONPb's, then checks that nothing but white
// space follows the value, on the same decoder: one pass over the body.
func (s *strictJSON) NewDecoder(r io.Reader) runtime.Decoder {
	d := json.NewDecoder(r)
	inner := runtime.DecoderWrapper{Decoder: d, UnmarshalOptions: s.UnmarshalOptions}
	return runtime.DecoderFunc(func(v any) error {
		if err := inner.Decode(v); err != nil {
			var syntax *json.SyntaxError
			if errors.As(err, &syntax) { // encoding/json's words ("invalid character '\x1f' looking for beginning of value") are not ours to send
				return fmt.Errorf("invalid JSON body: not JSON at byte %d", syntax.Offset)
			}
			return err
		}
		if _, err := d.Token(); err != io.EOF {
			return errTrailingData
		}
		return nil
	})
}
