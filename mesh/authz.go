package mesh

import (
	"context"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Policy decides, per method, which peers may call. grpc-go's authz
// package (gRFC A43) provides both kinds a server needs: a static policy
// (authz.NewStatic) and one read from a file and reloaded when it changes
// (authz.NewFileWatcher). Deny by default: a method no rule allows is
// refused with PERMISSION_DENIED.
type Policy interface {
	UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error)
	StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error
}

// PeerID is the SPIFFE ID the caller proved with its certificate, or ""
// on a connection without mTLS. Handlers use it to know which workload
// calls; it is in every access-log line as peer.id.
func PeerID(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && ti.SPIFFEID != nil {
		return ti.SPIFFEID.String()
	}
	return ""
}

func callerLabel(ctx context.Context) string {
	if id := PeerID(ctx); id != "" {
		return id
	}
	return "unauthenticated"
}

// authorize applies p and makes its refusals visible: a call the policy
// refused (PERMISSION_DENIED without reaching the handler) is counted by
// caller and method and logged with the peer's SPIFFE ID. The caller label
// is bounded: only peers with a certificate from a trusted CA get past the
// handshake, and methods are the registered ones (grpc-go answers unknown
// methods before interceptors run).
func authorize(p Policy, log *slog.Logger, m *Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		reached := false
		resp, err := p.UnaryInterceptor(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			reached = true
			return handler(ctx, req)
		})
		if err != nil && !reached {
			denied(ctx, log, m, info.FullMethod, err)
		}
		return resp, err
	}
}

func authorizeStream(p Policy, log *slog.Logger, m *Metrics) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		reached := false
		err := p.StreamInterceptor(srv, ss, info, func(srv any, ss grpc.ServerStream) error {
			reached = true
			return handler(srv, ss)
		})
		if err != nil && !reached {
			denied(ss.Context(), log, m, info.FullMethod, err)
		}
		return err
	}
}

func denied(ctx context.Context, log *slog.Logger, m *Metrics, method string, err error) {
	if status.Code(err) != codes.PermissionDenied {
		return
	}
	caller := callerLabel(ctx)
	m.authzDenied.WithLabelValues(caller, method).Inc()
	log.WarnContext(ctx, "call denied by policy", "grpc.method", method, "peer.id", caller, "request_id", RequestID(ctx))
}
