package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/credentials"
)

// Metrics counts refused handshakes. Build one per registry.
type Metrics struct {
	refused *prometheus.CounterVec
}

// Reasons a handshake is refused, the values of the reason label.
const (
	ReasonPlaintext     = "plaintext"      // the peer did not speak TLS
	ReasonNoCertificate = "no_certificate" // the peer presented none
	ReasonExpired       = "expired"        // expired or not yet valid
	ReasonTrustDomain   = "trust_domain"   // signed by no CA we trust for its trust domain
	ReasonUnauthorized  = "unauthorized"   // valid, but not the identity expected
	ReasonProtocol      = "protocol"       // anything else (old TLS version, bad record, reset)
)

// NewMetrics registers the identity collectors on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{refused: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "trellis_mtls_handshakes_refused_total",
		Help: "mTLS handshakes that failed, by side (server, client) and reason (plaintext, no_certificate, expired, trust_domain, unauthorized, protocol).",
	}, []string{"side", "reason"})}
	for _, side := range []string{"server", "client"} {
		for _, r := range []string{ReasonPlaintext, ReasonNoCertificate, ReasonExpired, ReasonTrustDomain, ReasonUnauthorized, ReasonProtocol} {
			m.refused.WithLabelValues(side, r)
		}
	}
	reg.MustRegister(m.refused)
	return m
}

// TLSConfig is the mutual TLS 1.3 configuration of a SPIFFE peer: it
// presents the source's current SVID and accepts a peer whose SVID chains
// to the bundle of its trust domain and that authorize accepts. It serves
// both ends of a connection (gRPC, NATS): crypto/tls uses the server or the
// client half.
func TLSConfig(src Source, authorize tlsconfig.Authorizer) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	tlsconfig.HookMTLSServerConfig(cfg, src, src, authorize)
	cfg.GetClientCertificate = tlsconfig.GetClientCertificate(src)
	// The peer is verified by its SPIFFE ID, not a host name.
	cfg.InsecureSkipVerify = true //nolint:gosec // VerifyPeerCertificate checks the chain
	return cfg
}

// ServerCredentials are gRPC server credentials: mTLS 1.3, clients from
// any trust domain the source has a bundle for (per-method policy decides
// what each may call). Refused handshakes are logged (at most a few per
// second, so a scanner cannot flood the log) and counted.
func ServerCredentials(src Source, log *slog.Logger, m *Metrics) credentials.TransportCredentials {
	return &observed{TransportCredentials: credentials.NewTLS(TLSConfig(src, tlsconfig.AuthorizeAny())), side: "server", log: log, m: m, limit: rate.NewLimiter(2, 10)}
}

// ClientCredentials are gRPC client credentials that present the source's
// SVID and accept only the server identity want.
func ClientCredentials(src Source, want spiffeid.ID, log *slog.Logger, m *Metrics) credentials.TransportCredentials {
	return &observed{TransportCredentials: credentials.NewTLS(TLSConfig(src, tlsconfig.AuthorizeID(want))), side: "client", log: log, m: m, limit: rate.NewLimiter(2, 10)}
}

// observed counts and logs failed handshakes. The AuthInfo it returns is
// grpc's own credentials.TLSInfo, which grpc/authz reads the peer's
// certificate from.
type observed struct {
	credentials.TransportCredentials
	side  string
	log   *slog.Logger
	m     *Metrics
	limit *rate.Limiter
}

func (o *observed) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := o.TransportCredentials.ServerHandshake(c)
	if err != nil {
		o.refused(c, err)
	}
	return conn, info, err
}

func (o *observed) ClientHandshake(ctx context.Context, authority string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := o.TransportCredentials.ClientHandshake(ctx, authority, c)
	if err != nil && ctx.Err() == nil {
		o.refused(c, err)
	}
	return conn, info, err
}

func (o *observed) Clone() credentials.TransportCredentials {
	c := *o
	c.TransportCredentials = o.TransportCredentials.Clone()
	return &c
}

func (o *observed) refused(c net.Conn, err error) {
	reason := Classify(err)
	o.m.refused.WithLabelValues(o.side, reason).Inc()
	if o.limit.Allow() {
		o.log.Warn("mTLS handshake refused", "side", o.side, "peer.address", c.RemoteAddr().String(), "reason", reason, "error", err.Error())
	}
}

// Classify names why a handshake failed (one of the Reason constants).
func Classify(err error) string {
	var inv x509.CertificateInvalidError
	var rec tls.RecordHeaderError
	msg := err.Error()
	switch {
	case errors.As(err, &rec) || strings.Contains(msg, "first record does not look like a TLS handshake"):
		return ReasonPlaintext
	case errors.As(err, &inv) && inv.Reason == x509.Expired, strings.Contains(msg, "expired or is not yet valid"), strings.Contains(msg, "certificate expired"):
		return ReasonExpired
	case strings.Contains(msg, "didn't provide a certificate"), strings.Contains(msg, "no peer certificates"), strings.Contains(msg, "certificate required"):
		return ReasonNoCertificate
	case strings.Contains(msg, "no X.509 bundle"), strings.Contains(msg, "bundle not found"), strings.Contains(msg, "unknown authority"), strings.Contains(msg, "unknown certificate authority"), strings.Contains(msg, "bad certificate"):
		return ReasonTrustDomain
	case strings.Contains(msg, "unexpected ID"), strings.Contains(msg, "authoriz"):
		return ReasonUnauthorized
	}
	return ReasonProtocol
}
