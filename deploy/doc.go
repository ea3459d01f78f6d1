// Package deploy holds the files that run Trellis beyond one process —
// Dockerfile and compose.yaml at the repository root, Kubernetes manifests
// (k8s/), Grafana, Prometheus and OpenTelemetry configuration — and the
// tests that validate them without containers: compose-spec's loader,
// BuildKit's Dockerfile parser, kustomize's Go API with strict decoding
// into the Kubernetes API types, and a scrape of a real trellis for every
// metric the dashboard queries. It is a separate Go module so these heavy
// dependencies stay out of the product's module graph.
package deploy
