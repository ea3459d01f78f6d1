package mesh

import (
	"context"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"

	"github.com/trellis-mesh/trellis/internal/apperr"
)

// Validator checks a request message and returns one violation per bad
// field, or none. Each service supplies one for its request types.
type Validator func(req any) []*errdetails.BadRequest_FieldViolation

// validation refuses requests that were not valid protobuf (see
// serverCodec), then runs the validator registered for the called service,
// before the handler sees the request.
func validation(validators map[string]Validator) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if malformed(req) {
			return nil, apperr.InvalidArgument([]*errdetails.BadRequest_FieldViolation{{
				Field: "(message)", Description: "not a valid protobuf encoding of the request (truncated, wrong wire types or a string that is not UTF-8)",
			}}).Err()
		}
		if v := validators[serviceName(info.FullMethod)]; v != nil {
			if violations := v(req); len(violations) > 0 {
				return nil, apperr.InvalidArgument(violations).Err()
			}
		}
		return handler(ctx, req)
	}
}

// serviceName returns "pkg.Service" from "/pkg.Service/Method".
func serviceName(fullMethod string) string {
	s := strings.TrimPrefix(fullMethod, "/")
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		return s[:i]
	}
	return s
}
