package outbox_test

import (
	"testing"

	"github.com/trellis-mesh/trellis/internal/outbox/outboxbench"
)

// BenchmarkPublish compares, in one run, raw JetStream async publishing
// (the ceiling) with the outbox relay publishing the same events from
// SQLite. ns/op is per event; the relay/raw ratio is the relay's overhead.
func BenchmarkPublish(b *testing.B) {
	b.Run("raw", outboxbench.PublishRaw)
	b.Run("relay-sqlite", outboxbench.PublishRelay)
}

// BenchmarkCommitToConsumerLag: commit to a durable consumer at 200/s.
func BenchmarkCommitToConsumerLag(b *testing.B) { outboxbench.CommitToConsumerLag(b) }
