package eventbus_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkJetStreamSync measures what JetStream's durable setting costs
// (docs/consistency.md): acknowledged publishes to a file-backed stream,
// in the relay's shape (async batches of 256, then wait for the acks),
// with the default sync interval (2 min: an acknowledged write may be in
// the page cache only) and with sync_interval: always (fsync before every
// acknowledgement). Compare the msgs/s of the two sub-benchmarks of one
// run: go test -run '^$' -bench JetStreamSync -count 5 ./mesh/eventbus
func BenchmarkJetStreamSync(b *testing.B) {
	for _, always := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync_always=%v", always), func(b *testing.B) {
			ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: b.TempDir(), DontListen: true, NoSigs: true, NoLog: true, SyncAlways: always})
			if err != nil {
				b.Fatal(err)
			}
			go ns.Start()
			defer ns.Shutdown()
			if !ns.ReadyForConnections(10 * time.Second) {
				b.Fatal("nats not ready")
			}
			nc, err := nats.Connect(ns.ClientURL(), nats.InProcessServer(ns))
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			js, _ := jetstream.New(nc)
			ctx := context.Background()
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage}); err != nil {
				b.Fatal(err)
			}
			payload := make([]byte, 512) // an order.created event's size
			b.ResetTimer()
			for sent := 0; sent < b.N; {
				batch := min(256, b.N-sent)
				acks := make([]jetstream.PubAckFuture, 0, batch)
				for range batch {
					f, err := js.PublishAsync("bench.created", payload)
					if err != nil {
						b.Fatal(err)
					}
					acks = append(acks, f)
				}
				for _, f := range acks {
					select {
					case <-f.Ok():
					case err := <-f.Err():
						b.Fatal(err)
					}
				}
				sent += batch
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
