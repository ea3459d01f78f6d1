// Package identity gives mesh components their workload identity — a SPIFFE
// ID carried in an X.509-SVID — and turns it into mutual-TLS credentials for
// gRPC servers, gRPC clients and NATS connections.
//
// One interface, Source, has three implementations chosen by configuration:
// a development CA kept in a directory that issues short-lived SVIDs in
// process and rotates them at half-life (DevCA, Linkerd's model with no
// set-up); certificate, key and bundle files reloaded when they change
// (Files, what cert-manager's csi-driver-spiffe or a Kubernetes secret
// mounts); and the SPIFFE Workload API (SPIRE) through go-spiffe v2.
//
// Credentials read the Source at every handshake, so rotation needs no
// restart and established connections are not disturbed.
package identity

import (
	"crypto/x509"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source is where a component's identity comes from: its current SVID and
// the trust bundles that verify its peers. Both may change at any time.
type Source interface {
	x509svid.Source
	x509bundle.Source
	// Close stops rotation or watching.
	Close() error
}

// DefaultTrustDomain is the trust domain of an installation that names
// none.
const DefaultTrustDomain = "trellis.local"

// Component is the SPIFFE ID of a Trellis component ("user", "order",
// "gateway", "nats"): spiffe://<td>/trellis/<name>.
func Component(td spiffeid.TrustDomain, name string) spiffeid.ID {
	id, err := spiffeid.FromSegments(td, "trellis", name)
	if err != nil {
		panic(fmt.Sprintf("identity: component name %q: %v", name, err)) // names are constants
	}
	return id
}

// ID returns the SPIFFE ID a source currently presents.
func ID(src Source) (spiffeid.ID, error) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return spiffeid.ID{}, err
	}
	return svid.ID, nil
}

// AuthorizeComponent accepts any Trellis component of trust domain td
// (spiffe://<td>/trellis/...), and nothing else.
func AuthorizeComponent(td spiffeid.TrustDomain) tlsconfig.Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if id.MemberOf(td) && strings.HasPrefix(id.Path(), "/trellis/") {
			return nil
		}
		return fmt.Errorf("unexpected ID %q: not a Trellis component of %s", id, td)
	}
}
