package mesh

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// grpcStatuser is what domain errors implement to choose their gRPC status.
type grpcStatuser interface{ GRPCStatus() *status.Status }

// errorEdge is the one place where errors leave the process: an error that
// carries a gRPC status (a domain error, a status from an upstream call) goes
// out with that status; anything else is an internal fault, logged here with
// its text and sent to the client as "internal error" plus the request id.
// No Go error text, SQL or stack reaches a client.
func errorEdge(log *slog.Logger, extraUnreachable func(error) bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err == nil {
			return resp, nil
		}
		return resp, publicError(ctx, log, info.FullMethod, err, extraUnreachable)
	}
}

func publicError(ctx context.Context, log *slog.Logger, method string, err error, extraUnreachable func(error) bool) error {
	var s grpcStatuser
	if errors.As(err, &s) {
		st := s.GRPCStatus()
		if st.Code() != codes.Unknown && st.Code() != codes.Internal {
			return st.Err()
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request cancelled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	case unreachable(err) || extraUnreachable != nil && extraUnreachable(err):
		// The database (or another backing service) cannot be reached:
		// the request was fine and may succeed when retried.
		log.WarnContext(ctx, "backing service unreachable", "grpc.method", method, "request_id", RequestID(ctx), "error", err.Error())
		msg := "temporarily unavailable: a backing service cannot be reached; retry later"
		if id := RequestID(ctx); id != "" {
			msg += " (request id " + id + ")"
		}
		return status.Error(codes.Unavailable, msg)
	}
	log.ErrorContext(ctx, "internal error", "grpc.method", method, "request_id", RequestID(ctx), "error", err.Error())
	return InternalError(ctx)
}

// unreachable reports whether err is a failure to reach something over the
// network (connection refused or reset, a dropped connection), as opposed
// to a bug or a bad query. What a database driver says (driver.ErrBadConn,
// PostgreSQL's connection errors) is ServerConfig.Unreachable's to add:
// the mesh links no SQL.
func unreachable(err error) bool {
	var netErr *net.OpError
	return errors.As(err, &netErr) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET)
}

// InternalError is the status every unexpected failure becomes: a fixed
// message and the request id to quote when reporting it.
func InternalError(ctx context.Context) error {
	msg := "internal error"
	if id := RequestID(ctx); id != "" {
		msg += " (request id " + id + ")"
	}
	return status.Error(codes.Internal, msg)
}
