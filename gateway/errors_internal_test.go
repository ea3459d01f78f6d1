package gateway

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	_ "google.golang.org/genproto/googleapis/rpc/errdetails" // the detail's type, for protojson
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestErrorsQuotingInvalidUTF8StayClientErrors: an error that quotes the
// client's bytes keeps its status when those bytes are not UTF-8
// (protojson refuses such strings, and the answer used to become
// "500 internal error"): the message gets U+FFFD, a detail that cannot be
// encoded is dropped.
func TestErrorsQuotingInvalidUTF8StayClientErrors(t *testing.T) {
	g := &Gateway{}
	// A google.rpc.BadRequest whose field name is not UTF-8, encoded by
	// hand (the proto encoder refuses to make one).
	violation := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "name\xc4")
	bad := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), violation)
	withDetail := status.FromProto(&spb.Status{Code: int32(codes.InvalidArgument), Message: "bad \xff field",
		Details: []*anypb.Any{{TypeUrl: "type.googleapis.com/google.rpc.BadRequest", Value: bad}}})
	for _, st := range []*status.Status{status.New(codes.InvalidArgument, "invalid grpc-timeout: \xc4"), withDetail} {
		w := httptest.NewRecorder()
		g.writeStatus(w, http.StatusBadRequest, st)
		var e struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		body := w.Body.String()
		if w.Code != http.StatusBadRequest || json.Unmarshal([]byte(body), &e) != nil || e.Code != int(codes.InvalidArgument) ||
			!utf8.ValidString(body) || !strings.Contains(e.Message, "\uFFFD") {
			t.Errorf("%q: %d %s", st.Message(), w.Code, body)
		}
	}
}
