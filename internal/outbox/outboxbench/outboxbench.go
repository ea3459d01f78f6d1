// Package outboxbench holds the event benchmarks — raw JetStream publishing
// vs the outbox relay, and commit-to-consumer lag — as plain functions of
// *testing.B, so `go test -bench` (internal/outbox) and the load harness
// (cmd/trellis-bench, with testing.Benchmark in its own process) run the
// same code. Each starts its own embedded NATS server and SQLite file.
package outboxbench

import (
	"context"
	"database/sql"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	"github.com/trellis-mesh/trellis/internal/event"
	"github.com/trellis-mesh/trellis/internal/outbox"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
)

func benchBus(b *testing.B) *eventbus.Bus {
	url, _ := testenv.NATS(b)
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	bus, err := eventbus.NewBus(nc, eventbus.Config{})
	if err != nil {
		b.Fatal(err)
	}
	if err := bus.EnsureStream(context.Background(), "BENCH", "trellis.user.v1.>"); err != nil {
		b.Fatal(err)
	}
	return bus
}

func benchEvent(b *testing.B) event.Event {
	id := uuid.NewString()
	ev, err := event.New("", "trellis.user.v1.created", "/trellis/user", id,
		&eventsv1.UserCreated{UserId: id, Email: "bench@example.com", Name: "Bench", CreateTime: timestamppb.Now()}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	return ev
}

// PublishRaw is raw JetStream async publishing, the ceiling the relay is
// measured against: ns/op is per event.
func PublishRaw(b *testing.B) {
	bus := benchBus(b)
	js := bus.JetStream()
	ev := benchEvent(b)
	b.ResetTimer()
	futures := make([]jetstream.PubAckFuture, 0, 256)
	for i := 0; i < b.N; i++ {
		f, err := js.PublishMsgAsync(&nats.Msg{Subject: "trellis.user.v1.created", Data: ev.Payload, Header: nats.Header{"ce-id": []string{ev.ID}}},
			jetstream.WithMsgID(uuid.NewString()))
		if err != nil {
			b.Fatal(err)
		}
		futures = append(futures, f)
		if len(futures) == cap(futures) || i == b.N-1 {
			for _, f := range futures {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					b.Fatal(err)
				}
			}
			futures = futures[:0]
		}
	}
}

// PublishRelay is the outbox relay publishing the same events from SQLite
// (read the batch, publish async, wait for acks, mark sent): ns/op is per
// event; PublishRelay/PublishRaw is the relay's overhead.
func PublishRelay(b *testing.B) {
	bus := benchBus(b)
	ctx := context.Background()
	db := testenv.OpenDB(b, "sqlite", "bench")
	o, err := outbox.New(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	// Fill the outbox outside the timer, in large transactions.
	for done := 0; done < b.N; {
		n := min(1000, b.N-done)
		if err := db.InTx(ctx, func(tx *sql.Tx) error {
			for range n {
				if err := outbox.Add(ctx, tx, benchEvent(b)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		done += n
	}
	r := eventbus.NewRelay(bus, o, eventbus.RelayConfig{Service: "bench", Batch: 256}, testenv.Logger(), eventbus.NewMetrics(prometheus.NewRegistry()))
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		n, err := r.Flush(ctx)
		if err != nil {
			b.Fatal(err)
		}
		sent += n
	}
}

// CommitToConsumerLag commits events at a fixed rate (200/s), each in its
// own transaction, with the relay notified on commit, and reports the time
// from commit to a durable consumer receiving it (p50-ms … p99.9-ms).
func CommitToConsumerLag(b *testing.B) {
	bus := benchBus(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db := testenv.OpenDB(b, "sqlite", "lag")
	o, err := outbox.New(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	m := eventbus.NewMetrics(prometheus.NewRegistry())
	r := eventbus.NewRelay(bus, o, eventbus.RelayConfig{Service: "bench"}, testenv.Logger(), m)
	relayDone := make(chan struct{})
	go func() { r.Run(ctx); close(relayDone) }()
	defer func() { cancel(); <-relayDone }()

	var mu sync.Mutex
	var lags []time.Duration
	got := make(chan struct{}, 1<<16)
	stop, err := bus.Consume(ctx, eventbus.ConsumerConfig{Stream: "BENCH", Durable: "lag", Subjects: []string{"trellis.user.v1.>"}},
		func(_ context.Context, d eventbus.Delivery) error {
			mu.Lock()
			lags = append(lags, time.Since(d.Time))
			mu.Unlock()
			got <- struct{}{}
			return nil
		}, testenv.Logger(), m)
	if err != nil {
		b.Fatal(err)
	}
	defer stop()
	const rate = 200
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		<-tick.C
		ev := benchEvent(b)
		if err := db.InTx(ctx, func(tx *sql.Tx) error { return outbox.Add(ctx, tx, ev) }); err != nil {
			b.Fatal(err)
		}
		r.Notify()
	}
	for range b.N {
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			b.Fatal("events did not reach the consumer")
		}
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lags)
	for _, q := range []struct {
		unit string
		at   float64
	}{{"p50-ms", .5}, {"p90-ms", .9}, {"p99-ms", .99}, {"p99.9-ms", .999}} {
		b.ReportMetric(float64(lags[int(q.at*float64(len(lags)-1))].Microseconds())/1000, q.unit)
	}
}
