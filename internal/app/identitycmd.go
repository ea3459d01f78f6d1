package app

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trellis-mesh/trellis/mesh/identity"
)

// IssueConfig is what `trellis identity issue` can be told.
type IssueConfig struct {
	Name        string
	Out         string
	TTL         time.Duration
	Dir         string
	TrustDomain string
}

// RegisterFlags defines the flags of `trellis identity issue`.
func (c *IssueConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Name, "name", "client/me", "identity to issue, the path of spiffe://<trust-domain>/<name>: client/<you> for people and tools, trellis/<user|order|gateway|nats> for a component")
	fs.StringVar(&c.Out, "out", "", "directory for svid.pem, svid-key.pem and bundle.pem; default: <identity-dir>/<name>")
	fs.DurationVar(&c.TTL, "ttl", 24*time.Hour, "lifetime of the certificate")
	fs.StringVar(&c.Dir, "identity-dir", "data/identity", "directory of the development CA, as given to trellis run")
	fs.StringVar(&c.TrustDomain, "trust-domain", identity.DefaultTrustDomain, "trust domain, as given to trellis run")
}

// Issue writes an X.509-SVID for the configured name from the development
// CA (created if it does not exist yet) and returns the directory.
func Issue(c IssueConfig) (string, error) {
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil {
		return "", fmt.Errorf("--trust-domain: %w", err)
	}
	if _, err := spiffeid.FromPath(td, "/"+c.Name); err != nil || c.Name == "" {
		return "", fmt.Errorf("--name %q: want a SPIFFE path like client/alice (%v)", c.Name, err)
	}
	if c.TTL < time.Minute {
		return "", errors.New("--ttl must be at least 1m")
	}
	svid, bundle, err := identity.IssueFromDir(c.Dir, td, c.Name, c.TTL)
	if err != nil {
		return "", err
	}
	out := c.Out
	if out == "" {
		out = filepath.Join(c.Dir, filepath.FromSlash(c.Name))
	}
	return out, identity.WriteFiles(out, svid, bundle)
}

// clientTLS is the TLS configuration a command-line tool presents as
// spiffe://<td>/client/<name> (issued from the development CA, or the
// files or Workload API identity), accepting only the server identity
// of a Trellis component; nil with --insecure-plaintext.
func clientTLS(ctx context.Context, cfg identity.Config, name string) (*tls.Config, func() error, error) {
	if cfg.Insecure {
		return nil, func() error { return nil }, nil
	}
	if cfg.Source != identity.SourceDev {
		p, err := identity.Open(ctx, cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, nil, err
		}
		src, err := p.For(name)
		if err != nil {
			p.Close()
			return nil, nil, err
		}
		return identity.TLSConfig(src, identity.AuthorizeComponent(p.TrustDomain())), p.Close, nil
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	svid, bundle, err := identity.IssueFromDir(cfg.Dir, td, "client/"+name, cfg.TTL)
	if err != nil {
		return nil, nil, err
	}
	return identity.TLSConfig(identity.Static(svid, bundle), identity.AuthorizeComponent(td)), func() error { return nil }, nil
}
