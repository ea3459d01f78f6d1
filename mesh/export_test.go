package mesh

import "github.com/prometheus/client_golang/prometheus"

// AuthzDenied is the denial counter of caller and method.
func (m *Metrics) AuthzDenied(caller, method string) prometheus.Counter {
	return m.authzDenied.WithLabelValues(caller, method)
}
