// Package mesh is Trellis's proxyless service mesh: the runtime every
// component links in so that each one gets the same resilience and
// observability without a sidecar. A Server wraps grpc-go with a fixed
// interceptor chain (request ids, logging, metrics, error hygiene, panic
// recovery, deadline cap, validation), health and reflection; Dial returns a
// client connection with default deadlines, a circuit breaker per upstream,
// retries for idempotent reads and client metrics.
//
// Nothing here uses globals: metrics go to the Registerer the caller passes to
// NewMetrics, logs to the caller's slog.Logger.
package mesh
