package mesh

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Propagator is the W3C trace context (traceparent, tracestate) and
// baggage propagation every Trellis component uses, over gRPC metadata,
// HTTP headers and NATS headers alike.
var Propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// serverTracing returns the OpenTelemetry stats handler of a server, or
// nothing when tracing is off (no provider): then the chain pays nothing.
func serverTracing(tp trace.TracerProvider) []grpc.ServerOption {
	if tp == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(Propagator)))}
}

func clientTracing(tp trace.TracerProvider) []grpc.DialOption {
	if tp == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(
		otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(Propagator)))}
}

// traceHandler adds the trace and span ids of the record's context to
// every log line written with a *Context method while a span is active.
type traceHandler struct{ slog.Handler }

// WithTraceIDs wraps h so log lines carry trace_id and span_id.
func WithTraceIDs(h slog.Handler) slog.Handler {
	if _, ok := h.(traceHandler); ok {
		return h
	}
	return traceHandler{h}
}

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(attrs)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}

// TraceParent is the W3C trace context to store with what a call causes
// later (an event in the outbox): the current span's when the call is
// traced, else the one the request arrived with, else "".
func TraceParent(ctx context.Context) string {
	if trace.SpanContextFromContext(ctx).IsValid() {
		carrier := propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, carrier)
		return carrier.Get("traceparent")
	}
	if tp := metadata.ValueFromIncomingContext(ctx, "traceparent"); len(tp) > 0 {
		return tp[0]
	}
	return ""
}
