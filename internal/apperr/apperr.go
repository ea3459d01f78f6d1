// Package apperr holds the domain error kinds the services share. A domain
// error carries the gRPC status it becomes at the edge (mesh's error
// interceptor reads it through GRPCStatus), so use-case code says what went
// wrong once and transport code never re-maps it.
package apperr

import (
	"fmt"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a domain error with a client-safe message.
type Error struct {
	code       codes.Code
	msg        string
	violations []*errdetails.BadRequest_FieldViolation
	dependency string // set by DependencyUnavailable
}

func (e *Error) Error() string { return e.msg }

// Code returns the gRPC code the error maps to.
func (e *Error) Code() codes.Code { return e.code }

// GRPCStatus is how the error leaves the process.
func (e *Error) GRPCStatus() *status.Status {
	if e.code == codes.InvalidArgument && len(e.violations) > 0 {
		return InvalidArgument(e.violations)
	}
	st := status.New(e.code, e.msg)
	if e.dependency != "" {
		if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: ReasonDependencyUnavailable, Domain: ErrorDomain,
			Metadata: map[string]string{"dependency": e.dependency}}); err == nil {
			return d
		}
	}
	return st
}

// Is lets errors.Is match on kind: errors.Is(err, apperr.NotFound("")).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.code == e.code && (t.msg == "" || t.msg == e.msg)
}

func newf(c codes.Code, format string, args ...any) *Error {
	return &Error{code: c, msg: fmt.Sprintf(format, args...)}
}

// NotFound: the addressed resource does not exist.
func NotFound(format string, args ...any) *Error { return newf(codes.NotFound, format, args...) }

// AlreadyExists: a unique key is taken.
func AlreadyExists(format string, args ...any) *Error {
	return newf(codes.AlreadyExists, format, args...)
}

// FailedPrecondition: the resource is not in a state that allows the call.
func FailedPrecondition(format string, args ...any) *Error {
	return newf(codes.FailedPrecondition, format, args...)
}

// Aborted: a conditional change lost to a concurrent one (a stale etag);
// read again and retry.
func Aborted(format string, args ...any) *Error {
	return newf(codes.Aborted, format, args...)
}

// The google.rpc.ErrorInfo of an answer DependencyUnavailable makes.
const (
	ErrorDomain                 = "trellis.dev"
	ReasonDependencyUnavailable = "DEPENDENCY_UNAVAILABLE"
)

// DependencyUnavailable: UNAVAILABLE because one of this service's own
// upstreams (dependency, e.g. "user") cannot answer now; the client may
// retry. The status carries an ErrorInfo saying so, and callers' circuit
// breakers do not count it against this service, which is alive and
// serving what does not need the dependency: a breaker that opened on it
// would take those calls down too.
func DependencyUnavailable(dependency, format string, args ...any) *Error {
	e := newf(codes.Unavailable, format, args...)
	e.dependency = dependency
	return e
}

// IsDependencyUnavailable reports whether err is a status made by
// DependencyUnavailable (here or in the service that answered).
func IsDependencyUnavailable(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetDomain() == ErrorDomain && ei.GetReason() == ReasonDependencyUnavailable {
			return true
		}
	}
	return false
}

// Unavailable: a dependency is down; the client may retry.
func Unavailable(format string, args ...any) *Error {
	return newf(codes.Unavailable, format, args...)
}

// Invalid: the request has bad fields.
func Invalid(violations ...*errdetails.BadRequest_FieldViolation) *Error {
	msg := "invalid request"
	if len(violations) > 0 {
		msg = "invalid request: " + violations[0].GetField() + ": " + violations[0].GetDescription()
	}
	return &Error{code: codes.InvalidArgument, msg: msg, violations: violations}
}

// InvalidArgument builds the INVALID_ARGUMENT status with a
// google.rpc.BadRequest detail listing every violation: the one shape of a
// bad request, whether the mesh's validation, a use case or the gateway's
// edge found it.
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

// Violation is shorthand for one field violation.
func Violation(field, description string) *errdetails.BadRequest_FieldViolation {
	return &errdetails.BadRequest_FieldViolation{Field: field, Description: description}
}

// Unauthenticated is a caller that did not prove who it is (no, wrong or
// expired credentials).
func Unauthenticated(format string, args ...any) *Error {
	return newf(codes.Unauthenticated, format, args...)
}

// PermissionDenied is a known caller without the right to do this at all
// (a missing role). Objects of others answer NotFound instead, so that
// nobody learns they exist.
func PermissionDenied(format string, args ...any) *Error {
	return newf(codes.PermissionDenied, format, args...)
}
