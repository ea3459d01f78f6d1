package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/trellis-mesh/trellis/internal/event"
	"github.com/trellis-mesh/trellis/internal/outbox"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
)

// TestOutboxConformance runs the outbox contract on every backend.
func TestOutboxConformance(t *testing.T) {
	t.Parallel()
	for _, d := range testenv.Backends {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := testenv.OpenDB(t, d, "outbox")
			o, err := outbox.New(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := outbox.New(ctx, db); err != nil { // migrations are idempotent
				t.Fatal(err)
			}
			at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
			var want []string
			for i := range 5 {
				ev, err := event.New(mesh.TraceParent(ctx), "s.created", "/src", uuid.NewString(), &emptypb.Empty{}, at.Add(time.Duration(i)*time.Second))
				if err != nil {
					t.Fatal(err)
				}
				ev.Payload = []byte{0, 1, 2, byte(i)}
				want = append(want, ev.ID)
				if err := db.InTx(ctx, func(tx *sql.Tx) error { return outbox.Add(ctx, tx, ev) }); err != nil {
					t.Fatal(err)
				}
			}
			// A rolled-back transaction leaves nothing behind.
			ev, _ := event.New(mesh.TraceParent(ctx), "s.created", "/src", "x", &emptypb.Empty{}, at)
			rollback := errors.New("rollback")
			if err := db.InTx(ctx, func(tx *sql.Tx) error {
				if err := outbox.Add(ctx, tx, ev); err != nil {
					return err
				}
				return rollback
			}); !errors.Is(err, rollback) {
				t.Fatal(err)
			}

			pending, err := o.Pending(ctx, 3)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range pending {
				got = append(got, p.ID)
			}
			if diff := cmp.Diff(want[:3], got); diff != "" {
				t.Errorf("first page of pending, commit order (-want +got):\n%s", diff)
			}
			if p := pending[1]; p.Payload[3] != 1 || p.Type != "google.protobuf.Empty" || p.Source != "/src" || !p.Time.Equal(at.Add(time.Second)) {
				t.Errorf("event read back = %+v", p)
			}
			if err := o.MarkSent(ctx, want[:3], at.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			if n, _ := o.CountPending(ctx); n != 2 {
				t.Errorf("pending after marking 3 of 5 = %d", n)
			}
			rest, _ := o.Pending(ctx, 10)
			if len(rest) != 2 || rest[0].ID != want[3] {
				t.Errorf("pending after marking = %v", rest)
			}
			if n, err := o.Prune(ctx, at.Add(30*time.Minute)); err != nil || n != 0 {
				t.Errorf("prune before the sent time removed %d (%v)", n, err)
			}
			if n, err := o.Prune(ctx, at.Add(2*time.Hour)); err != nil || n != 3 {
				t.Errorf("prune removed %d sent rows (%v), want 3", n, err)
			}
			if n, _ := o.CountPending(ctx); n != 2 {
				t.Errorf("prune touched pending rows: %d left", n)
			}

			// The lease: one holder at a time, renewable, taken over once expired.
			now := at
			for _, step := range []struct {
				holder string
				at     time.Duration
				want   bool
			}{{"a", 0, true}, {"b", time.Second, false}, {"a", 5 * time.Second, true}, {"b", 14 * time.Second, false}, {"b", 16 * time.Second, true}, {"a", 17 * time.Second, false}} {
				got, err := o.AcquireLease(ctx, step.holder, 10*time.Second, now.Add(step.at))
				if err != nil {
					t.Fatal(err)
				}
				if got != step.want {
					t.Errorf("lease for %s at +%v = %v, want %v", step.holder, step.at, got, step.want)
				}
			}
		})
	}
}
