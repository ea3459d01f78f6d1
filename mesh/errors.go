package mesh

import (
	"context"
	"errors"
	"log/slog"

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
func errorEdge(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err == nil {
			return resp, nil
		}
		return resp, publicError(ctx, log, info.FullMethod, err)
	}
}

func publicError(ctx context.Context, log *slog.Logger, method string, err error) error {
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
	}
	log.ErrorContext(ctx, "internal error", "grpc.method", method, "request_id", RequestID(ctx), "error", err.Error())
	return InternalError(ctx)
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
