package app

import (
	"fmt"
	"strings"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/trellis-mesh/trellis/internal/eventcontract"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
	"github.com/trellis-mesh/trellis/services/order"
	"github.com/trellis-mesh/trellis/services/user"
)

// EventsReader is the client name of `trellis events tail`: the identity
// spiffe://<td>/client/events-tail may read every stream and publish none.
const EventsReader = "events-tail"

// natsPermission is what one identity may do on the broker.
type natsPermission struct {
	id       string
	pub, sub []string
}

// natsPermissions is the broker's side of the event contract: each
// service publishes only the subjects of its own stream and manages only
// that stream; the order service reads the user stream through its
// durable consumer; the events reader reads everything. Replies come back
// on _INBOX subjects. Nothing else is allowed: a user.deleted event can
// only come from the user service.
func natsPermissions(trustDomain, prefix string) []natsPermission {
	td := spiffeIDs(trustDomain)
	owns := func(stream string) []string {
		s := eventbus.StreamName(prefix, stream)
		return []string{
			prefix + eventcontract.StreamSubjects(stream),
			"$JS.API.INFO",
			"$JS.API.STREAM.CREATE." + s, "$JS.API.STREAM.UPDATE." + s, "$JS.API.STREAM.INFO." + s,
		}
	}
	reads := func(stream string) []string {
		s := eventbus.StreamName(prefix, stream)
		return []string{
			"$JS.API.STREAM.INFO." + s,
			"$JS.API.CONSUMER.CREATE." + s, "$JS.API.CONSUMER.CREATE." + s + ".>",
			"$JS.API.CONSUMER.DURABLE.CREATE." + s + ".>", "$JS.API.CONSUMER.INFO." + s + ".>",
			"$JS.API.CONSUMER.DELETE." + s + ".>",
			"$JS.API.CONSUMER.MSG.NEXT." + s + ".>", "$JS.ACK." + s + ".>",
		}
	}
	inbox := []string{"_INBOX.>"}
	return []natsPermission{
		{id: td("trellis/" + TargetUser), pub: owns(user.Stream), sub: inbox},
		{id: td("trellis/" + TargetOrder), pub: append(owns(order.Stream), reads(user.Stream)...), sub: inbox},
		{id: td("client/" + EventsReader), pub: append(append([]string{"$JS.API.INFO"}, reads(user.Stream)...), reads(order.Stream)...),
			sub: append([]string{prefix + "trellis.>"}, inbox...)},
	}
}

func spiffeIDs(trustDomain string) func(path string) string {
	return func(path string) string { return "spiffe://" + trustDomain + "/" + path }
}

// NATSUsers are the embedded server's users, one per SPIFFE ID (matched
// against the URI SAN of the client certificate: verify_and_map).
func NATSUsers(trustDomain, prefix string) []*server.User {
	var out []*server.User
	for _, p := range natsPermissions(trustDomain, prefix) {
		out = append(out, &server.User{Username: p.id, Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: p.pub},
			Subscribe: &server.SubjectPermission{Allow: p.sub},
		}})
	}
	return out
}

// NATSServerConfig is the same security for an external nats-server, as
// its configuration file: TLS with the server's SVID files, client
// certificates required and mapped to users by SPIFFE ID, and the
// permissions of NATSUsers. `trellis identity nats-config` prints it.
func NATSServerConfig(trustDomain, prefix, certFile, keyFile, bundleFile string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Trellis: NATS authenticated by SPIFFE X.509-SVIDs (trust domain %s).\n", trustDomain)
	fmt.Fprintf(&b, "tls {\n  cert_file: %q\n  key_file: %q\n  ca_file: %q\n  verify_and_map: true\n  timeout: 2\n}\n", certFile, keyFile, bundleFile)
	b.WriteString("authorization {\n  users = [\n")
	for _, p := range natsPermissions(trustDomain, prefix) {
		fmt.Fprintf(&b, "    {user: %q, permissions: {publish: {allow: %s}, subscribe: {allow: %s}}}\n", p.id, quoteList(p.pub), quoteList(p.sub))
	}
	b.WriteString("  ]\n}\n")
	return b.String()
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
