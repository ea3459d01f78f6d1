// Package testenv gives tests real infrastructure: SQLite files in
// t.TempDir(), a private schema on the PostgreSQL server of the machine,
// gRPC servers on loopback sockets.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/sqldb"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
)

// PostgresURL is the server tests use: $TRELLIS_TEST_DATABASE_URL, or the
// one this machine and CI run (127.0.0.1:5432, trust auth, database test).
func PostgresURL() string {
	if u := os.Getenv("TRELLIS_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// Backends are the databases every store conformance suite runs against.
var Backends = []sqldb.Dialect{sqldb.SQLite, sqldb.Postgres}

// OpenDB opens a fresh database of the given backend for service name: a
// SQLite file in a temp dir, or a new schema on PostgreSQL dropped at
// cleanup. PostgreSQL being unreachable fails the test: it never skips,
// so CI cannot pass without it.
func OpenDB(t testing.TB, d sqldb.Dialect, name string) *sqldb.DB {
	t.Helper()
	cfg := sqldb.Config{Name: name, DataDir: t.TempDir()}
	if d == sqldb.Postgres {
		cfg.URL = PostgresURL()
		cfg.Schema = "t_" + name + "_" + randomHex(6)
	}
	db, err := sqldb.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open %s database (PostgreSQL must run at %s; see README): %v", d, cfg.URL, err)
	}
	t.Cleanup(func() {
		if d == sqldb.Postgres {
			_, _ = db.Exec("DROP SCHEMA " + cfg.Schema + " CASCADE")
		}
		db.Close()
	})
	return db
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Logger discards logs unless TRELLIS_TEST_LOG=1.
func Logger() *slog.Logger {
	if os.Getenv("TRELLIS_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Metrics returns mesh metrics on a fresh registry.
func Metrics() (*mesh.Metrics, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	return mesh.NewMetrics(reg), reg
}

// Serve starts srv on a loopback port and stops it at cleanup.
func Serve(t testing.TB, srv *mesh.Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(lis); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		<-done
	})
	return lis.Addr().String()
}

// Violations returns the fields named by the google.rpc.BadRequest detail
// of err, in order.
func Violations(err error) []string {
	var fields []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

// Dial connects a plain gRPC client (no mesh) to addr.
func Dial(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// NATS starts a NATS server with JetStream for the test, as nats-server's
// own tests do: in this process, on a random port, stored in t.TempDir().
// It returns the client URL and the server (to stop and restart it).
func NATS(t testing.TB) (string, *natsserver.Server) {
	t.Helper()
	ns := StartNATS(t, t.TempDir(), natsserver.RANDOM_PORT)
	return ns.ClientURL(), ns
}

// StartNATS starts a JetStream server storing in dir on port (RANDOM_PORT
// for any); it is shut down at cleanup.
func StartNATS(t testing.TB, dir string, port int) *natsserver.Server {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats: not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// StreamMessages reads every message a JetStream stream holds now, in
// stream order, optionally only those on subject (empty: all). A stream
// that does not exist holds nothing. A read that fails (a clustered node
// just back from a partition answers "JetStream system temporarily
// unavailable" while it catches up) is started again, for up to 20 s.
// Each attempt has 4 s of its own: a JetStream API request that no node
// answers (a stream leader whose info endpoint is not yet registered with
// the server we reach, nats-server#4519) waits out its whole context, and
// one such request must not spend the budget of every retry after it (CI,
// 2026-12-05: one request took all 20 s after a partition healed).
// On failure it reports every distinct error it met, when, and through
// which server.
func StreamMessages(t testing.TB, js jetstream.JetStream, stream, subject string) []jetstream.Msg {
	t.Helper()
	start := time.Now()
	var seen []string
	last := ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		out, err := streamMessages(ctx, js, stream, subject)
		cancel()
		if err == nil {
			return out
		}
		e := fmt.Sprintf("%v via %s", err, js.Conn().ConnectedUrlRedacted())
		if e != last {
			seen, last = append(seen, fmt.Sprintf("%.1fs: %s", time.Since(start).Seconds(), e)), e
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("read stream %s: no read succeeded in %v; errors, from the first:\n  %s",
				stream, time.Since(start).Round(time.Millisecond), strings.Join(seen, "\n  "))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func streamMessages(ctx context.Context, js jetstream.JetStream, stream, subject string) ([]jetstream.Msg, error) {
	s, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	var cfg jetstream.OrderedConsumerConfig
	if subject != "" {
		cfg.FilterSubjects = []string{subject}
	}
	c, err := s.OrderedConsumer(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var out []jetstream.Msg
	for {
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(500*time.Millisecond))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			out = append(out, m)
			n++
		}
		if n == 0 {
			return out, nil
		}
	}
}

// EventCount is the event side of a ledger: how many messages a stream
// holds on subject and how many distinct event ids (ce-id) among them.
// Every acknowledged change must have exactly one: msgs == distinct ==
// rows. The app tests and the chaos suite both count with it.
func EventCount(t testing.TB, js jetstream.JetStream, stream, subject string) (msgs, distinct int) {
	t.Helper()
	seen := map[string]bool{}
	for _, m := range StreamMessages(t, js, stream, subject) {
		msgs++
		seen[m.Headers().Get(eventbus.HeaderID)] = true
	}
	return msgs, len(seen)
}

// Bearer sends an access token with every call of a connection
// (grpc.WithPerRPCCredentials) or one call (grpc.PerRPCCredentials); it
// can be changed while in use, and sends nothing while empty.
type Bearer struct {
	mu    sync.Mutex
	token string
}

// NewBearer returns a Bearer holding token.
func NewBearer(token string) *Bearer { return &Bearer{token: token} }

// Set replaces the token.
func (b *Bearer) Set(token string) {
	b.mu.Lock()
	b.token = token
	b.mu.Unlock()
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b *Bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.token == "" {
		return nil, nil
	}
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials:
// tests also call plaintext servers.
func (*Bearer) RequireTransportSecurity() bool { return false }
