package mesh

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// NewLogger returns a slog logger writing to w. format is "json" (the
// default, for machines) or "text" (for people); level is debug, info, warn
// or error.
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(format) {
	case "", "json":
		return slog.New(WithTraceIDs(slog.NewJSONHandler(w, opts))), nil
	case "text":
		return slog.New(WithTraceIDs(slog.NewTextHandler(w, opts))), nil
	default:
		return nil, fmt.Errorf("log format %q: want json or text", format)
	}
}

// NewBufferedLogger is NewLogger writing through a buffer in front of w,
// for a process's own output: DEBUG and INFO lines (the access log's, one
// per call) go out in batches, every 100 ms or 256 KiB, instead of one
// write system call each; a WARN or ERROR line flushes the buffer with it
// at once. A process killed hard can lose the last 100 ms of INFO lines,
// never a warning or an error. Call stop at exit to flush the rest.
func NewBufferedLogger(w io.Writer, level, format string) (log *slog.Logger, stop func() error, err error) {
	// Wrapped so Sync flushes the buffer without fsyncing w.
	ws := &zapcore.BufferedWriteSyncer{WS: zapcore.AddSync(struct{ io.Writer }{w}), FlushInterval: 100 * time.Millisecond}
	log, err = NewLogger(ws, level, format)
	if err != nil {
		return nil, nil, err
	}
	return slog.New(flushOnWarn{log.Handler(), ws.Sync}), ws.Stop, nil
}

// flushOnWarn flushes after every record at WARN or above.
type flushOnWarn struct {
	slog.Handler
	flush func() error
}

func (h flushOnWarn) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		_ = h.flush()
	}
	return err
}

func (h flushOnWarn) WithAttrs(attrs []slog.Attr) slog.Handler {
	return flushOnWarn{h.Handler.WithAttrs(attrs), h.flush}
}

func (h flushOnWarn) WithGroup(name string) slog.Handler {
	return flushOnWarn{h.Handler.WithGroup(name), h.flush}
}

// accessLog writes one line per call: method, code, duration, peer and
// request id (and the status message when the call failed); the server's
// logger adds trace and span ids when the call is traced. It replaces
// go-grpc-middleware's logging interceptor, which allocates its field
// lists on every call (the largest cost of the chain in BenchmarkGetUser);
// this one builds its attributes on the stack. Successful calls and client
// errors log at INFO, server faults at ERROR.
func accessLog(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		code := status.Code(err)
		level := slog.LevelInfo
		if IsServerFault(context.Background(), err) {
			level = slog.LevelError
		}
		if !log.Enabled(ctx, level) {
			return resp, err
		}
		var peerAddr string
		if p, ok := peer.FromContext(ctx); ok {
			peerAddr = p.Addr.String()
		}
		attrs := [7]slog.Attr{
			slog.String("grpc.method", info.FullMethod),
			slog.String("grpc.code", code.String()),
			slog.Float64("grpc.time_ms", float64(time.Since(start).Microseconds())/1000),
			slog.String("peer.address", peerAddr),
			slog.String("peer.id", PeerID(ctx)),
			slog.String("request_id", RequestID(ctx)),
		}
		n := 6
		if err != nil {
			attrs[n] = slog.String("grpc.error", status.Convert(err).Message())
			n++
		}
		log.LogAttrs(ctx, level, "finished call", attrs[:n]...)
		return resp, err
	}
}
