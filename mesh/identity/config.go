package identity

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Source kinds, the values of --identity-source.
const (
	SourceDev    = "dev"
	SourceFiles  = "files"
	SourceSPIFFE = "spiffe"
)

// Config chooses where identities come from.
type Config struct {
	// Insecure turns mTLS and authorization off: plaintext everywhere.
	// For benchmarks that compare against plaintext; never the default.
	Insecure    bool
	Source      string
	TrustDomain string
	// Dir holds the development CA.
	Dir string
	// TTL is the lifetime of SVIDs the development CA issues.
	TTL               time.Duration
	Cert, Key, Bundle string
	Reload            time.Duration
	Socket            string
}

// RegisterFlags defines the identity flags on fs, each name prefixed.
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.BoolVar(&c.Insecure, prefix+"insecure-plaintext", false, "turn OFF mTLS, the per-method workload policy and NATS authentication (plaintext everywhere; access tokens are still required); for benchmarks against plaintext only")
	fs.StringVar(&c.Source, prefix+"identity-source", SourceDev, "where workload identities come from: dev (a development CA in --identity-dir), files (--identity-cert/-key/-bundle, reloaded when they change) or spiffe (the SPIFFE Workload API, e.g. a SPIRE agent)")
	fs.StringVar(&c.TrustDomain, prefix+"trust-domain", DefaultTrustDomain, "SPIFFE trust domain of the development CA")
	fs.StringVar(&c.Dir, prefix+"identity-dir", "data/identity", "directory of the development CA (created on first start; every process started with the same directory trusts the others)")
	fs.DurationVar(&c.TTL, prefix+"identity-ttl", time.Hour, "lifetime of the SVIDs the development CA issues; each is renewed at half its lifetime")
	fs.StringVar(&c.Cert, prefix+"identity-cert", "", "X.509-SVID certificate chain (PEM) for --identity-source files")
	fs.StringVar(&c.Key, prefix+"identity-key", "", "private key (PEM, PKCS#8) of --identity-cert")
	fs.StringVar(&c.Bundle, prefix+"identity-bundle", "", "trust bundle (PEM CA certificates) for --identity-source files")
	fs.DurationVar(&c.Reload, prefix+"identity-reload", 5*time.Second, "how often --identity-source files rereads its files")
	fs.StringVar(&c.Socket, prefix+"spiffe-socket", "", "SPIFFE Workload API address (unix:///run/spire/agent.sock)")
}

// Validate reports settings that cannot work.
func (c *Config) Validate() error {
	if c.Insecure {
		return nil
	}
	var errs []error
	if !slices.Contains([]string{SourceDev, SourceFiles, SourceSPIFFE}, c.Source) {
		errs = append(errs, fmt.Errorf("--identity-source %q: want dev, files or spiffe", c.Source))
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		errs = append(errs, fmt.Errorf("--trust-domain %q: %w", c.TrustDomain, err))
	}
	switch c.Source {
	case SourceDev:
		if c.TTL < 2*time.Second {
			errs = append(errs, errors.New("--identity-ttl must be at least 2s"))
		}
		if c.Dir == "" {
			errs = append(errs, errors.New("--identity-dir is empty"))
		}
	case SourceFiles:
		if c.Cert == "" || c.Key == "" || c.Bundle == "" {
			errs = append(errs, errors.New("--identity-source files needs --identity-cert, --identity-key and --identity-bundle"))
		}
		if c.Reload <= 0 {
			errs = append(errs, errors.New("--identity-reload must be positive"))
		}
	}
	return errors.Join(errs...)
}

// PerProcess reports whether the source gives one identity per process
// (files, Workload API) rather than one per component (dev).
func (c *Config) PerProcess() bool { return c.Source != SourceDev }

// Provider hands each component of a process its Source.
type Provider struct {
	cfg    Config
	log    *slog.Logger
	ca     *DevCA
	shared Source
	td     spiffeid.TrustDomain

	mu      sync.Mutex
	sources []Source
}

// Open prepares the configured source: opens (or creates) the development
// CA, reads the files, or waits for the Workload API's first SVID.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Provider{cfg: cfg, log: log}
	var err error
	switch cfg.Source {
	case SourceDev:
		p.td = spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
		p.ca, err = OpenDevCA(cfg.Dir, p.td)
	case SourceFiles:
		p.shared, err = OpenFiles(cfg.Cert, cfg.Key, cfg.Bundle, cfg.Reload, log)
	case SourceSPIFFE:
		p.shared, err = OpenWorkloadAPI(ctx, cfg.Socket)
	}
	if err != nil {
		return nil, err
	}
	if p.shared != nil {
		id, err := ID(p.shared)
		if err != nil {
			p.shared.Close()
			return nil, err
		}
		p.td = id.TrustDomain()
		p.sources = append(p.sources, p.shared)
		log.Info("workload identity", "source", cfg.Source, "id", id.String())
	}
	return p, nil
}

// TrustDomain is the trust domain components are expected in.
func (p *Provider) TrustDomain() spiffeid.TrustDomain { return p.td }

// CA is the development CA, or nil for other sources.
func (p *Provider) CA() *DevCA { return p.ca }

// For returns the identity of component (user, order, gateway, nats): an
// SVID the development CA issues for spiffe://<td>/trellis/<component>, or
// the process's one identity from files or the Workload API.
func (p *Provider) For(component string) (Source, error) {
	if p.shared != nil {
		return p.shared, nil
	}
	src, err := p.ca.Source(Component(p.td, component), p.cfg.TTL, p.log)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.sources = append(p.sources, src)
	p.mu.Unlock()
	return src, nil
}

// Close stops every source handed out.
func (p *Provider) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, s := range p.sources {
		errs = append(errs, s.Close())
	}
	p.sources = nil
	return errors.Join(errs...)
}
