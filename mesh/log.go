package mesh

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
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
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q: want json or text", format)
	}
}

// interceptorLogger adapts slog to go-grpc-middleware's logging.Logger.
func interceptorLogger(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}

// requestIDFields adds the request id to every call's log line.
func requestIDFields(ctx context.Context) logging.Fields {
	if id := RequestID(ctx); id != "" {
		return logging.Fields{"request_id", id}
	}
	return nil
}
