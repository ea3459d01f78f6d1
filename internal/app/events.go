package app

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/trellis-mesh/trellis/internal/eventcontract"
	"github.com/trellis-mesh/trellis/internal/redact"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
	"github.com/trellis-mesh/trellis/mesh/identity"
	"github.com/trellis-mesh/trellis/services/order"
	"github.com/trellis-mesh/trellis/services/user"
)

// eventBus connects a component to NATS (once per component: each
// presents its own identity, and the broker lets each publish only its
// own subjects): to --nats-url, or to a JetStream server embedded in this
// process with its store in --data-dir/nats (reachable over TCP only with
// --nats-listen).
func (a *App) eventBus(component string) (*eventbus.Bus, error) {
	if bus := a.buses[component]; bus != nil {
		return bus, nil
	}
	opts := []nats.Option{
		nats.Name("trellis " + component),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true), // start while NATS is down; events wait in the outbox
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				a.log.Warn("nats disconnected", "component", component, "error", err.Error())
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			a.log.Info("nats reconnected", "component", component, "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			a.log.Warn("nats error", "component", component, "error", err.Error())
		}),
	}
	opts = append(opts, a.cfg.Events.ConnOptions()...)
	tlsCfg, err := a.natsTLS(component)
	if err != nil {
		return nil, err
	}
	url := a.cfg.NATSURL
	if url == "" {
		ns, err := a.embeddedNATS()
		if err != nil {
			return nil, err
		}
		url = ns.ClientURL()
		opts = append(opts, nats.InProcessServer(ns))
	}
	if tlsCfg != nil {
		// Presented whenever the server asks for TLS (the embedded one
		// always does); a plaintext external NATS is used as it is, with
		// a warning below.
		opts = append(opts, func(o *nats.Options) error { o.TLSConfig = tlsCfg; return nil })
		if a.cfg.NATSURL == "" {
			opts = append(opts, nats.Secure(tlsCfg))
		}
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats: connect %s: %w", redact.URL(url), err)
	}
	a.closers = append(a.closers, func() error { nc.Close(); return nil })
	bus, err := eventbus.NewBus(nc, a.eventsConfig())
	if err != nil {
		return nil, err
	}
	if a.buses == nil {
		a.buses = map[string]*eventbus.Bus{}
	}
	a.buses[component] = bus
	where := nc.ConnectedUrlRedacted()
	if a.cfg.NATSURL == "" {
		// In process: the URL the client library reports (0.0.0.0:4222)
		// is not an address anything listens on.
		where = "in-process (no TCP listener; --nats-listen exposes it)"
		if addr := a.addrs["nats"]; addr != "" {
			where = "nats://" + addr
		}
	}
	a.log.Info("event bus ready", "component", component, "nats", where, "embedded", a.cfg.NATSURL == "")
	if _, err := nc.TLSConnectionState(); tlsCfg != nil && nc.IsConnected() && err != nil {
		a.log.Warn("NATS connection is not TLS: events are neither encrypted nor authenticated; configure the NATS server as docs/security.md shows", "component", component)
	}
	return bus, nil
}

func (a *App) eventsConfig() eventbus.Config {
	c := a.cfg.Events
	c.Tracer = a.tp
	return c
}

// embeddedNATS starts the process's JetStream server once. With security
// on it speaks only TLS 1.3, requires a client certificate from the trust
// domain, and maps each certificate's SPIFFE ID to a user whose
// permissions NATSUsers lists.
func (a *App) embeddedNATS() (*server.Server, error) {
	if a.ns != nil {
		return a.ns, nil
	}
	opts := &server.Options{
		ServerName: "trellis-embedded",
		JetStream:  true,
		StoreDir:   filepath.Join(a.cfg.DataDir, "nats"),
		DontListen: a.cfg.NATSListen == "",
		NoSigs:     true,
		NoLog:      true,
	}
	// Validated with the rest of the configuration.
	opts.SyncAlways, opts.SyncInterval, _ = a.cfg.natsSync()
	if a.cfg.NATSListen != "" {
		host, port, err := net.SplitHostPort(a.cfg.NATSListen)
		if err != nil {
			return nil, fmt.Errorf("--nats-listen: %w", err)
		}
		opts.Host = host
		if opts.Port, err = strconv.Atoi(port); err != nil {
			return nil, fmt.Errorf("--nats-listen port: %w", err)
		}
		if opts.Port == 0 {
			opts.Port = server.RANDOM_PORT
		}
	}
	if a.ids != nil {
		src, err := a.source("nats")
		if err != nil {
			return nil, err
		}
		opts.TLSConfig = identity.TLSConfig(src, tlsconfig.AuthorizeMemberOf(a.ids.TrustDomain()))
		opts.TLSVerify, opts.TLSMap, opts.TLSTimeout = true, true, 2
		opts.Users = NATSUsers(a.ids.TrustDomain().Name(), a.cfg.Events.Prefix)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready after 10s")
	}
	a.ns = ns
	a.closers = append(a.closers, func() error { ns.Shutdown(); ns.WaitForShutdown(); return nil })
	if a.cfg.NATSListen != "" {
		a.addrs["nats"] = ns.Addr().String()
		a.log.Info("embedded nats listening", "addr", ns.Addr().String(), "tls", a.ids != nil)
	}
	return ns, nil
}

// addRelay publishes the outbox of a service in the background.
func (a *App) addRelay(service string, outbox eventbus.Outbox, stream string, subjects ...string) (*eventbus.Relay, error) {
	bus, err := a.eventBus(service)
	if err != nil {
		return nil, err
	}
	r := eventbus.NewRelay(bus, outbox, eventbus.RelayConfig{
		Service:   service,
		Retention: a.cfg.Outbox.Retention,
		Prepare:   func(ctx context.Context) error { return bus.EnsureStream(ctx, stream, subjects...) },
	}, a.log.With("component", service), a.eventMetrics())
	a.workers = append(a.workers, r.Run)
	return r, nil
}

// addUserConsumer keeps the order service's replica of users from user
// events, starting (and restarting) the durable consumer in the
// background so the order service runs while NATS is down.
func (a *App) addUserConsumer(svc *order.Service) error {
	bus, err := a.eventBus(TargetOrder)
	if err != nil {
		return err
	}
	log := a.log.With("component", TargetOrder, "consumer", order.UsersConsumer)
	// Without security the order service may create the user stream
	// itself, so it can start first; with it, only the user service may
	// (the broker refuses the order service), and the consumer waits for
	// the stream.
	streamSubjects := eventcontract.StreamSubjects(user.Stream)
	if a.ids != nil {
		streamSubjects = ""
	}
	a.workers = append(a.workers, func(ctx context.Context) {
		bus.RunConsumer(ctx, eventbus.ConsumerConfig{Stream: user.Stream, Durable: order.UsersConsumer, Subjects: order.UserSubjects},
			streamSubjects, svc.HandleUserEvent, log, a.eventMetrics())
	})
	return nil
}

func (a *App) eventMetrics() *eventbus.Metrics {
	a.eventMetricsOnce.Do(func() { a.evMetrics = eventbus.NewMetrics(a.reg) })
	return a.evMetrics
}

// runWorkers starts the background workers; the returned function stops
// them and waits.
func (a *App) runWorkers(ctx context.Context) func() {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, w := range a.workers {
		wg.Go(func() { w(ctx) })
	}
	return func() { cancel(); wg.Wait() }
}
