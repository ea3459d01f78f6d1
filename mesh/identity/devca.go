package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Files a DevCA keeps in its directory.
const (
	caCertFile = "ca.pem"
	caKeyFile  = "ca-key.pem"
)

// devCAValidity is how long a development CA is trusted. It is created on
// first start; delete its directory to make a new one.
const devCAValidity = 5 * 365 * 24 * time.Hour

// DevCA is a development certificate authority for one trust domain, kept
// as two PEM files in a directory (the key readable only by its owner).
// Processes that share the directory share the CA, so components started
// separately on one machine trust each other.
type DevCA struct {
	td     spiffeid.TrustDomain
	cert   *x509.Certificate
	key    crypto.Signer
	bundle *x509bundle.Bundle
	now    func() time.Time
}

// OpenDevCA loads the CA in dir, creating it (and dir) on first use. A CA
// made for another trust domain is an error, not silently replaced.
func OpenDevCA(dir string, td spiffeid.TrustDomain) (*DevCA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	ca, err := loadDevCA(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err = createDevCA(dir, td); err == nil {
			ca, err = loadDevCA(dir)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("identity: development CA in %s: %w", dir, err)
	}
	if ca.td != td {
		return nil, fmt.Errorf("identity: the development CA in %s is for trust domain %q, not %q (use another --identity-dir, or delete it to start over)", dir, ca.td, td)
	}
	return ca, nil
}

func loadDevCA(dir string) (*DevCA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok || len(cert.URIs) != 1 {
		return nil, errors.New("not a development CA")
	}
	td, err := spiffeid.TrustDomainFromURI(cert.URIs[0])
	if err != nil {
		return nil, err
	}
	return &DevCA{td: td, cert: cert, key: signer, bundle: x509bundle.FromX509Authorities(td, []*x509.Certificate{cert}), now: time.Now}, nil
}

// createDevCA writes a new CA. Two processes starting at once on an empty
// directory race: both write their files under temporary names and link
// them into place; the loser's link fails and it loads the winner's CA.
func createDevCA(dir string, td spiffeid.TrustDomain) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"Trellis development CA"}, CommonName: td.String()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(devCAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	// The key first: a reader that finds the certificate finds the key.
	if err := placeOnce(dir, caKeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return placeOnce(dir, caCertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// placeOnce writes data to dir/name unless it exists (a hard link fails
// on an existing name, where a rename would replace it).
func placeOnce(dir, name string, data []byte, mode os.FileMode) error {
	return viaTemp(filepath.Join(dir, name), data, mode, func(tmp, path string) error {
		if err := os.Link(tmp, path); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		return nil
	})
}

// viaTemp writes data with mode to a temporary file beside path, then
// hands both names to place, which puts it at path.
func viaTemp(path string, data []byte, mode os.FileMode, place func(tmp, path string) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return place(f.Name(), path)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// TrustDomain is the CA's trust domain.
func (ca *DevCA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle is the CA's trust bundle.
func (ca *DevCA) Bundle() *x509bundle.Bundle { return ca.bundle }

// Issue makes an X.509-SVID for id, valid for ttl (from a minute ago, to
// tolerate clock skew between processes).
func (ca *DevCA) Issue(id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	if !id.MemberOf(ca.td) {
		return nil, fmt.Errorf("identity: %s is not in trust domain %s", id, ca.td)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := ca.now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"Trellis"}},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if name, ok := strings.CutPrefix(id.Path(), "/trellis/"); ok {
		// Components serve on this machine or under their own name, so
		// tools that check host names (grpcurl, curl) can verify them
		// with the bundle alone; peers inside the mesh check the SPIFFE ID.
		tmpl.DNSNames = []string{name, "localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}, nil
}

// Source issues an SVID for id now and a fresh one at half of each one's
// lifetime, until Close.
func (ca *DevCA) Source(id spiffeid.ID, ttl time.Duration, log *slog.Logger) (*Rotating, error) {
	svid, err := ca.Issue(id, ttl)
	if err != nil {
		return nil, err
	}
	r := &Rotating{bundle: ca.bundle, stop: make(chan struct{})}
	r.svid.Store(svid)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			cur := r.svid.Load()
			life := cur.Certificates[0].NotAfter.Sub(cur.Certificates[0].NotBefore) - time.Minute
			t := time.NewTimer(time.Until(cur.Certificates[0].NotBefore.Add(time.Minute + life/2)))
			select {
			case <-r.stop:
				t.Stop()
				return
			case <-t.C:
			}
			next, err := ca.Issue(id, ttl)
			if err != nil {
				log.Error("identity: SVID rotation failed; retrying in 1s", "id", id.String(), "error", err.Error())
				next = cur
				time.Sleep(time.Second)
			}
			r.svid.Store(next)
			r.rotations.Add(1)
			log.Debug("identity: SVID rotated", "id", id.String(), "not_after", next.Certificates[0].NotAfter)
		}
	}()
	return r, nil
}

// Rotating is a Source whose SVID is replaced in the background.
type Rotating struct {
	svid      atomic.Pointer[x509svid.SVID]
	bundle    *x509bundle.Bundle
	rotations atomic.Int64
	stop      chan struct{}
	once      sync.Once
	wg        sync.WaitGroup
}

// GetX509SVID returns the current SVID.
func (r *Rotating) GetX509SVID() (*x509svid.SVID, error) { return r.svid.Load(), nil }

// GetX509BundleForTrustDomain returns the CA's bundle for its own trust
// domain; every other trust domain is unknown.
func (r *Rotating) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return r.bundle.GetX509BundleForTrustDomain(td)
}

// Rotations counts the SVIDs issued after the first.
func (r *Rotating) Rotations() int64 { return r.rotations.Load() }

// Close stops rotation.
func (r *Rotating) Close() error {
	r.once.Do(func() { close(r.stop) })
	r.wg.Wait()
	return nil
}

// WriteFiles writes an SVID and its trust bundle as the three PEM files
// the Files source (and grpcurl, nats-server, curl) read: svid.pem (the
// certificate chain), svid-key.pem (PKCS#8, owner-only) and bundle.pem.
func WriteFiles(dir string, svid *x509svid.SVID, bundle *x509bundle.Bundle) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	certs, key, err := svid.Marshal()
	if err != nil {
		return err
	}
	b, err := bundle.Marshal()
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{"svid-key.pem", key, 0o600}, {"svid.pem", certs, 0o644}, {"bundle.pem", b, 0o644}} {
		if err := writeAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// writeAtomic replaces path with data, so a watcher never reads half a
// file.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	return viaTemp(path, data, mode, os.Rename)
}

// IssueFromDir issues an SVID for spiffe://<td>/<path> (path without its
// leading slash, e.g. client/alice) from the development CA in dir,
// creating the CA if it does not exist yet, and returns it with the CA's
// trust bundle: what a tool, a test or `trellis identity issue` needs.
func IssueFromDir(dir string, td spiffeid.TrustDomain, path string, ttl time.Duration) (*x509svid.SVID, *x509bundle.Bundle, error) {
	id, err := spiffeid.FromPath(td, "/"+path)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: %q is not a SPIFFE path: %w", path, err)
	}
	ca, err := OpenDevCA(dir, td)
	if err != nil {
		return nil, nil, err
	}
	svid, err := ca.Issue(id, ttl)
	if err != nil {
		return nil, nil, err
	}
	return svid, ca.Bundle(), nil
}

// Static is a Source that serves one SVID and bundle, e.g. a client's
// identity issued for a test or a command-line tool.
func Static(svid *x509svid.SVID, bundle *x509bundle.Bundle) Source {
	return static{svid: svid, bundle: bundle}
}

type static struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func (s static) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }
func (s static) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundle.GetX509BundleForTrustDomain(td)
}
func (s static) Close() error { return nil }
