package identity

import (
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// IssueAt issues an SVID as if the clock read at.
func IssueAt(ca *DevCA, id spiffeid.ID, ttl time.Duration, at time.Time) (*x509svid.SVID, error) {
	c := *ca
	c.now = func() time.Time { return at }
	return c.Issue(id, ttl)
}

// Refused reads the refused-handshake counter.
func (m *Metrics) Refused(side, reason string) float64 {
	return testutil.ToFloat64(m.refused.WithLabelValues(side, reason))
}
