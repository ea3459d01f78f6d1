package mesh

import "github.com/prometheus/client_golang/prometheus"

// AuthzDenied is the denial counter of caller and method.
func (m *Metrics) AuthzDenied(caller, method string) prometheus.Counter {
	return m.authzDenied.WithLabelValues(caller, method)
}

// Refused is the counter of calls refused before their handler.
func (m *Metrics) Refused(method, reason string) prometheus.Counter {
	return m.refused.WithLabelValues(method, reason)
}
