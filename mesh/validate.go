package mesh

import (
	"context"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Validator checks a request message and returns one violation per bad
// field, or none. Each service supplies one for its request types.
type Validator func(req any) []*errdetails.BadRequest_FieldViolation

// InvalidArgument builds the INVALID_ARGUMENT status with a
// google.rpc.BadRequest detail listing every violation.
func InvalidArgument(violations []*errdetails.BadRequest_FieldViolation) *status.Status {
	msg := "invalid request: " + violations[0].GetField() + ": " + violations[0].GetDescription()
	if n := len(violations); n > 1 {
		msg += " (and " + strconv.Itoa(n-1) + " more)"
	}
	st, err := status.New(codes.InvalidArgument, msg).WithDetails(&errdetails.BadRequest{FieldViolations: violations})
	if err != nil { // only fails when a detail cannot be marshalled
		return status.New(codes.InvalidArgument, msg)
	}
	return st
}

// validation refuses requests that were not valid protobuf (see
// serverCodec), then runs the validator registered for the called service,
// before the handler sees the request.
func validation(validators map[string]Validator) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if malformed(req) {
			return nil, InvalidArgument([]*errdetails.BadRequest_FieldViolation{{
				Field: "(message)", Description: "not a valid protobuf encoding of the request (truncated, wrong wire types or a string that is not UTF-8)",
			}}).Err()
		}
		if v := validators[serviceName(info.FullMethod)]; v != nil {
			if violations := v(req); len(violations) > 0 {
				return nil, InvalidArgument(violations).Err()
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
