package eventbus

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
)

// Config tunes the streams. Zero fields take the defaults on each field.
type Config struct {
	// Prefix is put before every subject and stream name; empty in
	// production, unique per test when tests share one NATS server.
	Prefix string
	// Replicas of each stream (3 on a clustered JetStream). Default 1.
	Replicas int
	// Duplicates is the deduplication window: a republished event id is
	// dropped if seen within it. Default 2m.
	Duplicates time.Duration
	// MaxAge is how long events are kept. Default 7 days.
	MaxAge time.Duration
	// MaxBytes caps each stream's size. Default 1 GiB.
	MaxBytes int64
	// Tracer, when set, gives every consumed event a span, child of the
	// span that committed the change (from the message's traceparent).
	Tracer trace.TracerProvider
	// PingInterval is how often the client pings its NATS server; after
	// MaxPingsOut unanswered pings it drops the connection and reconnects
	// to another server of the cluster. A server cut off by the network
	// (no FIN, no RST) is noticed only this way: with nats.go's default
	// of 2 minutes the outbox relay published into a dead connection for
	// minutes. Default DefaultPingInterval.
	PingInterval time.Duration
}

// Stream settings that are flags, and their limits.
const (
	DefaultReplicas = 1
	MaxReplicas     = 5
	// DefaultPingInterval and MaxPingsOut: a silent server is left after
	// 4-6 s (two unanswered pings, the second check one interval later).
	DefaultPingInterval = 2 * time.Second
	MinPingInterval     = 100 * time.Millisecond
	MaxPingInterval     = 10 * time.Minute
	MaxPingsOut         = 2
)

// RegisterFlags defines nats-prefix and nats-replicas, each prefixed.
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.StringVar(&c.Prefix, prefix+"nats-prefix", "", "prefix for every NATS subject and stream name, to share one NATS between installations")
	fs.IntVar(&c.Replicas, prefix+"nats-replicas", DefaultReplicas, "replicas of each JetStream stream (3 on a clustered JetStream)")
	fs.DurationVar(&c.PingInterval, prefix+"nats-ping-interval", DefaultPingInterval, "how often each NATS connection pings its server; two unanswered pings and it reconnects to another server (a server cut off by the network is noticed only this way)")
}

// ConnOptions are the NATS connection options this Config implies: the
// ping interval and the unanswered pings that end a connection, and a
// write timeout of one ping interval after which the client reconnects.
// The write timeout is needed as much as the pings: a client writing to
// a server that no longer reads blocks in the write with the
// connection's lock held, and its ping timer waits behind it (nats.go's
// default write timeout is a minute).
func (c Config) ConnOptions() []nats.Option {
	c = c.withDefaults()
	return []nats.Option{
		nats.PingInterval(c.PingInterval), nats.MaxPingsOutstanding(MaxPingsOut),
		nats.FlusherTimeout(c.PingInterval), nats.ReconnectOnFlusherError(),
	}
}

// Validate reports settings that cannot work.
func (c *Config) Validate() error {
	if c.Replicas < 1 || c.Replicas > MaxReplicas {
		return fmt.Errorf("--nats-replicas must be between 1 and %d", MaxReplicas)
	}
	if !(c.PingInterval >= MinPingInterval && c.PingInterval <= MaxPingInterval) {
		return fmt.Errorf("--nats-ping-interval must be between %v and %v", MinPingInterval, MaxPingInterval)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Replicas <= 0 {
		c.Replicas = DefaultReplicas
	}
	if c.Duplicates <= 0 {
		c.Duplicates = 2 * time.Minute
	}
	if c.PingInterval <= 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.MaxAge <= 0 {
		c.MaxAge = 7 * 24 * time.Hour
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 1 << 30
	}
	return c
}

// Bus is a JetStream connection with Trellis's stream conventions.
type Bus struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	cfg Config
}

// NewBus wraps a NATS connection. The caller owns nc.
func NewBus(nc *nats.Conn, cfg Config) (*Bus, error) {
	// Acks lost in an outage must not hold async-publish slots forever:
	// time them out, and the relay republishes (deduplicated by id).
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1024), jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return nil, err
	}
	return &Bus{nc: nc, js: js, cfg: cfg.withDefaults()}, nil
}

// JetStream exposes the JetStream handle (for tools and tests).
func (b *Bus) JetStream() jetstream.JetStream { return b.js }

// Subject returns the full subject of s.
func (b *Bus) Subject(s string) string { return b.cfg.Prefix + s }

// StreamName returns the full name of stream name.
func (b *Bus) StreamName(name string) string { return StreamName(b.cfg.Prefix, name) }

// StreamName is the full name of stream name under a subject prefix.
func StreamName(prefix, name string) string {
	return strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(prefix)) + name
}

// EnsureStream creates the stream or updates it to the current settings;
// running it at every start is safe.
func (b *Bus) EnsureStream(ctx context.Context, name string, subjects ...string) error {
	full := make([]string, len(subjects))
	for i, s := range subjects {
		full[i] = b.Subject(s)
	}
	_, err := b.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        b.StreamName(name),
		Description: "Trellis domain events: " + strings.Join(subjects, ", "),
		Subjects:    full,
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    b.cfg.Replicas,
		Duplicates:  b.cfg.Duplicates,
		MaxAge:      b.cfg.MaxAge,
		MaxBytes:    b.cfg.MaxBytes,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return fmt.Errorf("eventbus: stream %s: %w", b.StreamName(name), err)
	}
	return nil
}
