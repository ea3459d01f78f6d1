package app

import (
	"context"
	"os"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// tracer returns the process's tracer provider: the one the caller set
// (tests), or an OTLP exporter when the standard OTEL_EXPORTER_OTLP_*
// environment asks for one, or none — then nothing is traced and the
// components pay nothing for it.
func (a *App) tracer(ctx context.Context) (trace.TracerProvider, error) {
	if a.cfg.Tracer != nil {
		return a.cfg.Tracer, nil
	}
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return nil, nil
	}
	exp, err := otlptracegrpc.New(ctx) // endpoint, headers, TLS from the OTEL_* environment
	if err != nil {
		return nil, err
	}
	name := os.Getenv("OTEL_SERVICE_NAME")
	if name == "" {
		name = "trellis-" + strings.ReplaceAll(a.cfg.Target, ",", "-")
	}
	res, err := resource.Merge(resource.Default(), resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName(name)))
	if err != nil {
		return nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	a.closers = append(a.closers, func() error { return tp.Shutdown(context.Background()) })
	a.log.Info("tracing: exporting spans over OTLP", "service", name)
	return tp, nil
}
