package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	_ "github.com/trellis-mesh/trellis/gen/trellis/events/v1" // registers the payload types for decoding
	"github.com/trellis-mesh/trellis/internal/redact"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
	"github.com/trellis-mesh/trellis/mesh/identity"
	"github.com/trellis-mesh/trellis/services/order"
	"github.com/trellis-mesh/trellis/services/user"
)

// TailConfig is what `trellis events tail` can be told.
type TailConfig struct {
	NATSURL    string
	NATSPrefix string
	Subject    string
	All        bool
	// Identity is what the tail presents to a NATS that requires TLS:
	// spiffe://<td>/client/events-tail from the development CA, or the
	// files or Workload API identity.
	Identity identity.Config
}

// RegisterFlags defines the flags of `trellis events tail`.
func (c *TailConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.NATSURL, "nats-url", "nats://127.0.0.1:4222", "NATS server to read events from (trellis run --nats-listen exposes the embedded one)")
	fs.StringVar(&c.NATSPrefix, "nats-prefix", "", "subject and stream prefix, as given to trellis run")
	fs.StringVar(&c.Subject, "subject", "trellis.>", "subject pattern to show, e.g. trellis.user.v1.* or trellis.order.v1.cancelled")
	fs.BoolVar(&c.All, "all", false, "first print the events JetStream still holds, then follow new ones")
	c.Identity.RegisterFlags("", fs)
}

// Tail prints events matching the subject as JSON lines on w until ctx
// ends, and on status what it follows and whether Trellis's streams are
// there at all (so a wrong URL or prefix does not look like a quiet
// system). The ids printed are remembered for the session, so it is a
// debugging tool, not something to leave running for days.
func Tail(ctx context.Context, cfg TailConfig, w, status io.Writer) error {
	tlsCfg, closeIdentity, err := clientTLS(ctx, cfg.Identity, EventsReader)
	if err != nil {
		return err
	}
	defer closeIdentity()
	opts := []nats.Option{nats.Name("trellis events tail"), nats.Timeout(5 * time.Second)}
	if tlsCfg != nil {
		opts = append(opts, func(o *nats.Options) error { o.TLSConfig = tlsCfg; return nil })
	}
	nc, err := nats.Connect(cfg.NATSURL, opts...)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", redact.URL(cfg.NATSURL), err)
	}
	defer nc.Close()
	// Subscribe before replaying, so nothing published in between is
	// missed; events seen in the replay are not printed twice.
	msgs := make(chan *nats.Msg, 4096)
	sub, err := nc.ChanSubscribe(cfg.NATSPrefix+cfg.Subject, msgs)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	bus, err := eventbus.NewBus(nc, eventbus.Config{Prefix: cfg.NATSPrefix})
	if err != nil {
		return err
	}
	var missing []string
	for _, stream := range []string{user.Stream, order.Stream} {
		if _, err := bus.JetStream().Stream(ctx, bus.StreamName(stream)); errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
			missing = append(missing, bus.StreamName(stream))
		}
	}
	where := redact.URL(nc.ConnectedUrl())
	if len(missing) > 0 {
		fmt.Fprintf(status, "no stream %s on %s (prefix %q): no Trellis has published there yet; is trellis running with this --nats-url and --nats-prefix? Waiting for events anyway.\n",
			strings.Join(missing, ", "), where, cfg.NATSPrefix)
	}
	fmt.Fprintf(status, "following %s on %s; Ctrl-C stops\n", cfg.NATSPrefix+cfg.Subject, where)
	printed := map[string]bool{}
	print := func(msg *nats.Msg) {
		if id := msg.Header.Get(eventbus.HeaderID); id != "" {
			if printed[id] {
				return
			}
			printed[id] = true
		}
		if line, err := eventbus.FormatJSON(msg, cfg.NATSPrefix); err == nil {
			fmt.Fprintln(w, string(line))
		}
	}
	if cfg.All {
		for _, stream := range []string{user.Stream, order.Stream} {
			if err := replay(ctx, bus, stream, cfg, print); err != nil {
				return err
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-msgs:
			print(m)
		}
	}
}

// replay prints what a stream holds that matches the subject.
func replay(ctx context.Context, bus *eventbus.Bus, stream string, cfg TailConfig, print func(*nats.Msg)) error {
	s, err := bus.JetStream().Stream(ctx, bus.StreamName(stream))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		raw, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if eventbus.Match(cfg.NATSPrefix+cfg.Subject, raw.Subject) {
			print(&nats.Msg{Subject: raw.Subject, Header: raw.Header, Data: raw.Data})
		}
	}
	return nil
}
