package eventbus_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/prometheus/client_golang/prometheus"
	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	"github.com/trellis-mesh/trellis/internal/event"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testenv.LeakOptions()...) }

// memOutbox is an in-memory Outbox whose failures the test controls.
type memOutbox struct {
	mu       sync.Mutex
	events   []event.Event
	sent     map[string]bool
	failMark atomic.Int32 // MarkSent fails this many more times
	lease    struct {
		holder  string
		expires time.Time
	}
}

func newMemOutbox() *memOutbox { return &memOutbox{sent: map[string]bool{}} }

func (o *memOutbox) add(evs ...event.Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, evs...)
}

func (o *memOutbox) Pending(_ context.Context, limit int) ([]event.Event, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []event.Event
	for _, ev := range o.events {
		if !o.sent[ev.ID] && len(out) < limit {
			out = append(out, ev)
		}
	}
	return out, nil
}

func (o *memOutbox) MarkSent(_ context.Context, ids []string, _ time.Time) error {
	if o.failMark.Add(-1) >= 0 {
		return errors.New("database gone") // the relay "dies" after publishing
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, id := range ids {
		o.sent[id] = true
	}
	return nil
}

func (o *memOutbox) CountPending(ctx context.Context) (int64, error) {
	p, _ := o.Pending(ctx, 1<<30)
	return int64(len(p)), nil
}

func (o *memOutbox) Prune(context.Context, time.Time) (int64, error) { return 0, nil }

func (o *memOutbox) AcquireLease(_ context.Context, holder string, ttl time.Duration, now time.Time) (bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.lease.holder != "" && o.lease.holder != holder && now.Before(o.lease.expires) {
		return false, nil
	}
	o.lease.holder, o.lease.expires = holder, now.Add(ttl)
	return true, nil
}

// servers are the NATS servers every relay test runs against: one
// embedded in the test, and the machine's (127.0.0.1:4222, as in CI) with
// a private subject prefix. The machine's server must be there: the test
// fails rather than skip.
func servers(t *testing.T) map[string]string {
	embedded, _ := testenv.NATS(t)
	machine := os.Getenv("TRELLIS_TEST_NATS_URL")
	if machine == "" {
		machine = "nats://127.0.0.1:4222"
	}
	return map[string]string{"embedded": embedded, "machine": machine}
}

func connect(t *testing.T, url string) (*eventbus.Bus, *nats.Conn) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to NATS at %s (see README, Testing): %v", url, err)
	}
	t.Cleanup(nc.Close)
	prefix := "t" + uuid.NewString()[:8] + "."
	bus, err := eventbus.NewBus(nc, eventbus.Config{Prefix: prefix, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = bus.JetStream().DeleteStream(context.Background(), bus.StreamName("TEST"))
	})
	return bus, nc
}

func userCreated(t *testing.T, n int) event.Event {
	t.Helper()
	id := uuid.NewString()
	ev, err := event.New("", "trellis.user.v1.created", "/trellis/user", id,
		&eventsv1.UserCreated{UserId: id, Email: fmt.Sprintf("u%d@example.com", n), CreateTime: timestamppb.Now()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ev.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	return ev
}

func relay(t *testing.T, bus *eventbus.Bus, o eventbus.Outbox) *eventbus.Relay {
	return eventbus.NewRelay(bus, o, eventbus.RelayConfig{
		Service: "test", Batch: 50, Poll: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, AckTimeout: time.Second,
		LeaseTTL: 100 * time.Millisecond,
		Prepare:  func(ctx context.Context) error { return bus.EnsureStream(ctx, "TEST", "trellis.user.v1.>") },
	}, testenv.Logger(), eventbus.NewMetrics(prometheus.NewRegistry()))
}

// streamIDs waits until the stream holds want messages and returns their
// ce-ids in stream order.
func streamIDs(t *testing.T, bus *eventbus.Bus, want int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if msgs := testenv.StreamMessages(t, bus.JetStream(), bus.StreamName("TEST"), ""); len(msgs) >= want {
			ids := make([]string, len(msgs))
			for i, m := range msgs {
				ids[i] = m.Headers().Get(eventbus.HeaderID)
			}
			return ids
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("stream did not reach %d messages", want)
	return nil
}

func TestRelayPublishesInOrderWithHeaders(t *testing.T) {
	t.Parallel()
	for name, url := range servers(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			bus, _ := connect(t, url)
			out := newMemOutbox()
			var want []string
			for i := range 120 {
				ev := userCreated(t, i)
				want = append(want, ev.ID)
				out.add(ev)
			}
			r := relay(t, bus, out)
			for n, err := r.Flush(context.Background()); n > 0 || err != nil; n, err = r.Flush(context.Background()) {
				if err != nil {
					t.Fatal(err)
				}
			}
			if p, _ := out.CountPending(context.Background()); p != 0 {
				t.Errorf("%d events still pending after flushing", p)
			}
			got := streamIDs(t, bus, len(want))
			if !slices.Equal(want, got) {
				t.Fatalf("stream order differs from commit order")
			}
			// Headers of one message.
			msg, err := bus.JetStream().Stream(context.Background(), bus.StreamName("TEST"))
			if err != nil {
				t.Fatal(err)
			}
			raw, err := msg.GetMsg(context.Background(), 1)
			if err != nil {
				t.Fatal(err)
			}
			for h, v := range map[string]string{
				"Nats-Msg-Id": want[0], eventbus.HeaderID: want[0], eventbus.HeaderType: "trellis.events.v1.UserCreated",
				eventbus.HeaderSource: "/trellis/user", eventbus.HeaderSpecVersion: "1.0",
				eventbus.HeaderTraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			} {
				if got := raw.Header.Get(h); got != v {
					t.Errorf("header %s = %q, want %q", h, got, v)
				}
			}
			if raw.Header.Get(eventbus.HeaderTime) == "" {
				t.Error("no ce-time header")
			}
		})
	}
}

// TestRelayKilledBetweenPublishAndMark: the events were stored by
// JetStream but the relay could not record it; the next pass republishes
// them and JetStream's deduplication keeps one copy each.
func TestRelayKilledBetweenPublishAndMark(t *testing.T) {
	t.Parallel()
	for name, url := range servers(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			bus, _ := connect(t, url)
			out := newMemOutbox()
			for i := range 10 {
				out.add(userCreated(t, i))
			}
			out.failMark.Store(1)
			r := relay(t, bus, out)
			if _, err := r.Flush(context.Background()); err == nil {
				t.Fatal("first pass should fail to mark")
			}
			// A fresh relay, as after a restart (once the dead one's lease
			// has expired).
			time.Sleep(150 * time.Millisecond)
			if n, err := relay(t, bus, out).Flush(context.Background()); err != nil || n != 10 {
				t.Fatalf("second pass: %d, %v", n, err)
			}
			ids := streamIDs(t, bus, 10)
			if len(ids) != 10 {
				t.Errorf("stream has %d messages, want 10 (duplicates must be dropped)", len(ids))
			}
		})
	}
}

// TestRelayWaitsOutNATSOutage stops the embedded server while events are
// committed, then starts it again on the same port and store: everything
// arrives, nothing twice.
func TestRelayWaitsOutNATSOutage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ns := testenv.StartNATS(t, dir, -1)
	addr := ns.ClientURL()
	bus, _ := connect(t, addr)
	out := newMemOutbox()
	r := relay(t, bus, out)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	for i := range 20 {
		out.add(userCreated(t, i))
		r.Notify()
	}
	streamIDs(t, bus, 20)
	ns.Shutdown()
	ns.WaitForShutdown()
	for i := 20; i < 60; i++ {
		out.add(userCreated(t, i))
		r.Notify()
	}
	time.Sleep(300 * time.Millisecond) // the relay is failing and backing off
	if p, _ := out.CountPending(context.Background()); p == 0 {
		t.Fatal("events were marked sent while NATS was down")
	}
	_, port, err := splitURL(addr)
	if err != nil {
		t.Fatal(err)
	}
	testenv.StartNATS(t, dir, port) // same port and store: the client reconnects
	ids := streamIDs(t, bus, 60)
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Errorf("event %s stored twice", id)
		}
		seen[id] = true
	}
	if len(ids) != 60 {
		t.Errorf("stream has %d events, want 60", len(ids))
	}
	waitFor(t, func() bool { p, _ := out.CountPending(context.Background()); return p == 0 })
}

func splitURL(u string) (string, int, error) {
	p, err := url.Parse(u)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p.Port())
	return p.Hostname(), port, err
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOnlyTheLeaseHolderPublishes runs two relays on one outbox.
func TestOnlyTheLeaseHolderPublishes(t *testing.T) {
	t.Parallel()
	url, _ := testenv.NATS(t)
	bus, _ := connect(t, url)
	out := newMemOutbox()
	out.add(userCreated(t, 1))
	a, b := relay(t, bus, out), relay(t, bus, out)
	if n, err := a.Flush(context.Background()); n != 1 || err != nil {
		t.Fatalf("first relay: %d %v", n, err)
	}
	out.add(userCreated(t, 2))
	if n, err := b.Flush(context.Background()); n != 0 || err != nil {
		t.Fatalf("second relay published %d while the first holds the lease (%v)", n, err)
	}
	if n, _ := a.Flush(context.Background()); n != 1 {
		t.Fatalf("lease holder published %d, want 1", n)
	}
}

// TestConsumerRetriesThenDrops: a failing handler gets the event again
// after a backoff; ErrPermanent terminates it.
func TestConsumerRetriesThenDrops(t *testing.T) {
	t.Parallel()
	for name, url := range servers(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			bus, _ := connect(t, url)
			out := newMemOutbox()
			good, bad := userCreated(t, 1), userCreated(t, 2)
			out.add(good, bad)
			if _, err := relay(t, bus, out).Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			deliveries := map[string][]uint64{}
			stop, err := bus.Consume(context.Background(), eventbus.ConsumerConfig{
				Stream: "TEST", Durable: "test", Subjects: []string{"trellis.user.v1.created"},
				Backoff: []time.Duration{50 * time.Millisecond},
			}, func(_ context.Context, d eventbus.Delivery) error {
				mu.Lock()
				deliveries[d.ID] = append(deliveries[d.ID], d.NumDelivered)
				n := len(deliveries[d.ID])
				mu.Unlock()
				switch {
				case d.ID == bad.ID:
					return fmt.Errorf("%w: cannot apply", eventbus.ErrPermanent)
				case n == 1:
					return errors.New("transient")
				}
				return nil
			}, testenv.Logger(), eventbus.NewMetrics(prometheus.NewRegistry()))
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(deliveries[good.ID]) == 2 })
			time.Sleep(200 * time.Millisecond) // nothing more should arrive
			stop()
			mu.Lock()
			defer mu.Unlock()
			if got := deliveries[good.ID]; !slices.Equal(got, []uint64{1, 2}) {
				t.Errorf("good event deliveries = %v, want [1 2]", got)
			}
			if got := deliveries[bad.ID]; len(got) != 1 {
				t.Errorf("permanently failing event delivered %d times, want 1", len(got))
			}
		})
	}
}

// blackhole forwards TCP to target until frozen; from then on it reads
// nothing more and sends nothing, and keeps the connections open, as a
// network partition does (no FIN, no RST reaches either side, and a
// writer's socket buffers fill up).
type blackhole struct {
	ln     net.Listener
	frozen atomic.Bool
	done   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func newBlackhole(t *testing.T, target string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, done: make(chan struct{})}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			b.mu.Lock()
			b.conns = append(b.conns, in, out)
			b.mu.Unlock()
			b.wg.Add(2)
			go b.pipe(out, in)
			go b.pipe(in, out)
		}
	}()
	t.Cleanup(func() {
		b.cut()
		b.wg.Wait()
	})
	return b
}

// cut ends the partition the hard way: every connection closed (the
// client sees a reset), the listener too. It may be called twice.
func (b *blackhole) cut() {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.done:
		return
	default:
	}
	close(b.done)
	b.ln.Close()
	for _, c := range b.conns {
		c.Close()
	}
}

func (b *blackhole) pipe(dst, src net.Conn) {
	defer b.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if b.frozen.Load() {
			<-b.done // read nothing more until the test ends
			return
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// TestSilentServerIsLeft: a client whose NATS server goes silent (cut off
// by the network, connection still open) leaves it for another server of
// the cluster within a few ping intervals, with the options Config gives
// every Trellis connection. nats.go's own default (a ping every 2 minutes)
// stays on the silent server: the outbox relay published into such a
// connection for minutes when chaos-cluster partitioned the stream leader.
func TestSilentServerIsLeft(t *testing.T) {
	silent, _ := testenv.NATS(t)
	other, _ := testenv.NATS(t)
	u, err := url.Parse(silent)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		opts       []nats.Option
		publishing bool // the client keeps writing: its socket buffers fill and its writes block
		leave      bool
	}{
		{"eventbus options", eventbus.Config{PingInterval: 100 * time.Millisecond}.ConnOptions(), false, true},
		{"eventbus options, publishing", eventbus.Config{PingInterval: 100 * time.Millisecond}.ConnOptions(), true, true},
		{"nats.go defaults", nil, false, false},
		// nats.go's pings alone: a write blocked on the full socket holds
		// the connection's lock, and the ping timer waits behind it for
		// the 1 minute write timeout (chaos-cluster: 48 s).
		{"pings only, publishing", []nats.Option{nats.PingInterval(100 * time.Millisecond), nats.MaxPingsOutstanding(2)}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBlackhole(t, u.Host)
			proxied := "nats://" + b.ln.Addr().String()
			// The verdict comes from the disconnect callback: asking the
			// connection (ConnectedUrl) takes the lock a blocked write holds.
			left := make(chan struct{})
			var once sync.Once
			opts := append([]nats.Option{nats.DontRandomize(), nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond),
				nats.DisconnectErrHandler(func(*nats.Conn, error) { once.Do(func() { close(left) }) })}, tc.opts...)
			nc, err := nats.Connect(proxied+","+other, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			if got := nc.ConnectedUrl(); got != proxied {
				t.Fatalf("connected to %s; want the proxied server first", got)
			}
			// Deferred, in the order they run: the publisher told to stop,
			// the proxy's connections cut (a write still blocked fails at
			// once), the publisher waited for, the client closed.
			stop := make(chan struct{})
			var pubs sync.WaitGroup
			defer pubs.Wait()
			defer b.cut()
			defer close(stop)
			if tc.publishing {
				payload := make([]byte, 4096)
				pubs.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
						_ = nc.Publish("t.silent", payload)
					}
				})
			}
			b.frozen.Store(true)
			// 100 ms pings, two unanswered: gone after 200-300 ms; 3 s is
			// the bound a loaded CI machine gets.
			gone := false
			select {
			case <-left:
				gone = true
			case <-time.After(3 * time.Second):
			}
			if gone != tc.leave {
				t.Fatalf("after 3 s of silence the client left the silent server: %v; want %v", gone, tc.leave)
			}
			if !gone {
				return
			}
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) && nc.ConnectedUrl() != other {
				time.Sleep(20 * time.Millisecond)
			}
			if got := nc.ConnectedUrl(); got != other {
				t.Fatalf("left the silent server but is on %q; want the other server %s", got, other)
			}
		})
	}
}
