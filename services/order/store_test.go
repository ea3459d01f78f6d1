package order_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	"github.com/trellis-mesh/trellis/internal/event"
	"github.com/trellis-mesh/trellis/internal/sqldb"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/services/order"
)

// TestStoreConformance runs one suite against every backend.
func TestStoreConformance(t *testing.T) {
	t.Parallel()
	for _, d := range testenv.Backends {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			for name, test := range storeTests {
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					s, err := order.NewSQLStore(context.Background(), testenv.OpenDB(t, d, "order"))
					if err != nil {
						t.Fatal(err)
					}
					test(t, s)
				})
			}
		})
	}
}

// eventFor is a stand-in event of its own id for an order.
func eventFor(t *testing.T, orderID string) event.Event {
	t.Helper()
	ev, err := event.New("", order.SubjectCreated, order.EventSource, orderID, &eventsv1.OrderCreated{OrderId: orderID}, base)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// created is a stand-in event; the store does not look inside payloads.
func created(t *testing.T) event.Event {
	t.Helper()
	ev, err := event.New("", order.SubjectCreated, order.EventSource, uuid.NewString(), &eventsv1.OrderCreated{}, base)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func pending(t *testing.T, s *order.SQLStore) []event.Event {
	t.Helper()
	evs, err := s.Outbox().Pending(context.Background(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

var base = time.Date(2026, 11, 1, 12, 0, 0, 654321000, time.UTC)

func newOrder(userID, key string) order.Order {
	id, _ := uuid.NewV7()
	return order.Order{
		ID: id.String(), UserID: userID, Currency: "EUR", Total: 2600, Status: order.StatusConfirmed,
		Items: []order.Item{
			{ProductID: "p1", Quantity: 2, UnitPrice: 1250},
			{ProductID: "p2", Quantity: 1, UnitPrice: 100},
		},
		IdempotencyKey: key, PayloadHash: "h-" + key, CreateTime: base, UpdateTime: base, Version: 1,
	}
}

var storeTests = map[string]func(t *testing.T, s *order.SQLStore){
	"create then get returns the order with its items in order": func(t *testing.T, s *order.SQLStore) {
		ctx := context.Background()
		want := newOrder(uuid.NewString(), "r1")
		if err := s.Create(ctx, want, created(t)); err != nil {
			t.Fatal(err)
		}
		for _, get := range []func() (order.Order, error){
			func() (order.Order, error) { return s.Get(ctx, want.ID) },
			func() (order.Order, error) { return s.GetByIdempotencyKey(ctx, want.UserID, "r1") },
		} {
			got, err := get()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("read back (-want +got):\n%s", diff)
			}
		}
	},
	"request id is unique and a failed create leaves nothing": func(t *testing.T, s *order.SQLStore) {
		ctx := context.Background()
		first := newOrder(uuid.NewString(), "r1")
		if err := s.Create(ctx, first, created(t)); err != nil {
			t.Fatal(err)
		}
		dup := newOrder(first.UserID, "r1")
		if err := s.Create(ctx, dup, created(t)); !errors.Is(err, order.ErrIdempotencyKeyTaken) {
			t.Fatalf("Create with used request id: got %v, want ErrIdempotencyKeyTaken", err)
		}
		if _, err := s.Get(ctx, dup.ID); !errors.Is(err, order.ErrNotFound) {
			t.Errorf("rolled-back order is readable: %v", err)
		}
		// Keys are per user: another user may use "r1" too.
		other := newOrder(uuid.NewString(), "r1")
		if err := s.Create(ctx, other, created(t)); err != nil {
			t.Fatalf("another user's r1: %v", err)
		}
		if _, err := s.GetByIdempotencyKey(ctx, uuid.NewString(), "r1"); !errors.Is(err, order.ErrNotFound) {
			t.Errorf("a third user finds someone's r1: %v", err)
		}
	},
	"list by user is newest first and pages": func(t *testing.T, s *order.SQLStore) {
		ctx := context.Background()
		userID := uuid.NewString()
		var want []string
		for i := range 5 {
			o := newOrder(userID, "r"+string(rune('a'+i)))
			want = append([]string{o.ID}, want...)
			if err := s.Create(ctx, o, created(t)); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Create(ctx, newOrder(uuid.NewString(), "other"), created(t)); err != nil {
			t.Fatal(err)
		}
		var got []string
		before := ""
		for {
			page, err := s.ListByUser(ctx, userID, before, 2)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			for _, o := range page {
				if len(o.Items) != 2 {
					t.Errorf("order %s has %d items, want 2", o.ID, len(o.Items))
				}
				got = append(got, o.ID)
			}
			before = page[len(page)-1].ID
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("listed (-want +got):\n%s", diff)
		}
	},
	"a rolled-back create leaves no event": func(t *testing.T, s *order.SQLStore) {
		ctx := context.Background()
		o := newOrder(uuid.NewString(), "r1")
		if err := s.Create(ctx, o, created(t)); err != nil {
			t.Fatal(err)
		}
		if err := s.Create(ctx, newOrder(o.UserID, "r1"), created(t)); !errors.Is(err, order.ErrIdempotencyKeyTaken) {
			t.Fatal(err)
		}
		if n := len(pending(t, s)); n != 1 {
			t.Errorf("outbox has %d events, want 1 (the failed create's event must roll back)", n)
		}
	},
	"user events apply once, keep the newest version and tombstones": func(t *testing.T, s *order.SQLStore) {
		ctx := context.Background()
		uid := uuid.NewString()
		noCancel := func(order.Order) (event.Event, error) { t.Fatal("nothing to cancel"); return event.Event{}, nil }
		if _, err := s.KnownUser(ctx, uid); !errors.Is(err, order.ErrUnknownUser) {
			t.Fatalf("KnownUser before any event: %v", err)
		}
		v1 := order.KnownUser{ID: uid, Email: "a@example.com", Name: "A", Version: base}
		if _, err := s.ApplyUser(ctx, "c", "ev-1", v1, noCancel); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ApplyUser(ctx, "c", "ev-1", order.KnownUser{ID: uid, Email: "changed@example.com", Version: base.Add(time.Hour)}, noCancel); !errors.Is(err, order.ErrAlreadyApplied) {
			t.Fatalf("redelivered event: got %v, want ErrAlreadyApplied", err)
		}
		old := order.KnownUser{ID: uid, Email: "old@example.com", Name: "Old", Version: base.Add(-time.Hour)}
		if _, err := s.ApplyUser(ctx, "c", "ev-0", old, noCancel); err != nil {
			t.Fatal(err)
		}
		got, err := s.KnownUser(ctx, uid)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(v1, got); diff != "" {
			t.Errorf("replica after a redelivery and an older event (-want +got):\n%s", diff)
		}
	},
	"no order of a deleted user survives, however Create and the deletion race": func(t *testing.T, s *order.SQLStore) {
		ctx := context.Background()
		cancel := func(o order.Order) (event.Event, error) {
			return event.New(mesh.TraceParent(ctx), order.SubjectCancelled, order.EventSource, o.ID, &eventsv1.OrderCancelled{OrderId: o.ID}, base)
		}
		const pairs = 40
		var wg sync.WaitGroup
		ids := make([]string, pairs)
		made := make([]bool, pairs)
		for i := range pairs {
			uid := uuid.NewString()
			if i%2 == 0 { // half the users are in the replica already
				if _, err := s.ApplyUser(ctx, "c", "created-"+uid, order.KnownUser{ID: uid, Email: "x@example.com", Version: base}, cancel); err != nil {
					t.Fatal(err)
				}
			}
			o := newOrder(uid, "r")
			ids[i] = o.ID
			wg.Add(2)
			go func() {
				defer wg.Done()
				err := s.Create(ctx, o, eventFor(t, o.ID))
				switch {
				case err == nil:
					made[i] = true
				case errors.Is(err, order.ErrUserDeleted):
				default:
					t.Errorf("Create: %v", err)
				}
			}()
			go func() {
				defer wg.Done()
				if _, err := s.ApplyUser(ctx, "c", "deleted-"+uid, order.KnownUser{ID: uid, Deleted: true, Version: base.Add(time.Second)}, cancel); err != nil {
					t.Errorf("ApplyUser(deleted): %v", err)
				}
			}()
		}
		wg.Wait()
		for i, id := range ids {
			o, err := s.Get(ctx, id)
			switch {
			case !made[i] && errors.Is(err, order.ErrNotFound):
			case made[i] && err == nil && o.Status == order.StatusCancelled:
			default:
				t.Errorf("pair %d: created %v, order %+v, err %v: want cancelled or absent", i, made[i], o.Status, err)
			}
		}
	},
	"a deleted user's open orders are cancelled with events, once": func(t *testing.T, s *order.SQLStore) {
		ctx := context.Background()
		uid := uuid.NewString()
		open1, open2, done := newOrder(uid, "a"), newOrder(uid, "b"), newOrder(uid, "c")
		done.Status = order.StatusCancelled
		other := newOrder(uuid.NewString(), "d")
		for _, o := range []order.Order{open1, open2, done, other} {
			if err := s.Create(ctx, o, created(t)); err != nil {
				t.Fatal(err)
			}
		}
		before := len(pending(t, s))
		cancel := func(o order.Order) (event.Event, error) {
			return event.New(mesh.TraceParent(ctx), order.SubjectCancelled, order.EventSource, o.ID, &eventsv1.OrderCancelled{OrderId: o.ID}, base.Add(time.Minute))
		}
		tomb := order.KnownUser{ID: uid, Deleted: true, Version: base}
		cancelled, err := s.ApplyUser(ctx, "c", "del-1", tomb, cancel)
		if err != nil {
			t.Fatal(err)
		}
		if len(cancelled) != 2 {
			t.Fatalf("cancelled %d orders, want the 2 open ones", len(cancelled))
		}
		for _, id := range []string{open1.ID, open2.ID} {
			if o, _ := s.Get(ctx, id); o.Status != order.StatusCancelled {
				t.Errorf("order %s status %v, want cancelled", id, o.Status)
			}
		}
		if o, _ := s.Get(ctx, other.ID); o.Status != order.StatusConfirmed {
			t.Errorf("another user's order was touched: %v", o.Status)
		}
		if n := len(pending(t, s)) - before; n != 2 {
			t.Errorf("%d cancellation events, want 2", n)
		}
		if _, err := s.ApplyUser(ctx, "c", "del-1", tomb, cancel); !errors.Is(err, order.ErrAlreadyApplied) {
			t.Errorf("redelivered delete: %v", err)
		}
		// A late user.updated does not resurrect a deleted user.
		if _, err := s.ApplyUser(ctx, "c", "upd-late", order.KnownUser{ID: uid, Email: "x@example.com", Version: base.Add(time.Hour)}, cancel); err != nil {
			t.Fatal(err)
		}
		if u, _ := s.KnownUser(ctx, uid); !u.Deleted {
			t.Error("a later update resurrected a deleted user")
		}
	},
	"list by status": func(t *testing.T, s *order.SQLStore) {
		ctx := context.Background()
		a, b := newOrder(uuid.NewString(), "a"), newOrder(uuid.NewString(), "b")
		a.Status = order.StatusPending
		for _, o := range []order.Order{a, b} {
			if err := s.Create(ctx, o, created(t)); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.ListByStatus(ctx, order.StatusPending, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].ID != a.ID || len(got[0].Items) != 2 {
			t.Errorf("pending orders = %+v", got)
		}
	},
	"set status is conditional": func(t *testing.T, s *order.SQLStore) {
		ctx := context.Background()
		o := newOrder(uuid.NewString(), "r1")
		if err := s.Create(ctx, o, created(t)); err != nil {
			t.Fatal(err)
		}
		at := base.Add(time.Minute)
		if err := s.SetStatus(ctx, o.ID, order.StatusConfirmed, order.StatusCancelled, at, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.SetStatus(ctx, o.ID, order.StatusConfirmed, order.StatusCancelled, at, nil); !errors.Is(err, order.ErrStatusChanged) {
			t.Errorf("second SetStatus from CONFIRMED: got %v, want ErrStatusChanged", err)
		}
		if err := s.SetStatus(ctx, uuid.NewString(), order.StatusConfirmed, order.StatusCancelled, at, nil); !errors.Is(err, order.ErrNotFound) {
			t.Errorf("SetStatus of missing order: got %v, want ErrNotFound", err)
		}
		got, err := s.Get(ctx, o.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != order.StatusCancelled || !got.UpdateTime.Equal(at) {
			t.Errorf("after cancel: status %v, update_time %v", got.Status, got.UpdateTime)
		}
	},
}

// TestOneUsersCreatesDoNotQueue: on PostgreSQL a Create of a user does not
// wait for another Create of the same user that is still in its
// transaction (the replica row is locked shared; with the write lock of
// an upsert, one user's orders committed one at a time). Create A is held
// in its transaction by an uncommitted order of the same idempotency key
// (its insert waits for that transaction); Create B, of the same user,
// must commit meanwhile.
func TestOneUsersCreatesDoNotQueue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.OpenDB(t, sqldb.Postgres, "order")
	s, err := order.NewSQLStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	uid := uuid.NewString()
	if err := s.Create(ctx, newOrder(uid, "first"), created(t)); err != nil { // the replica row exists
		t.Fatal(err)
	}
	holder, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback()
	if _, err := holder.ExecContext(ctx, `INSERT INTO orders (id, user_id, status, currency, total_minor, idempotency_key, payload_hash, create_time, update_time, version)
		VALUES ($1, $2, 1, 'EUR', 1, 'a', 'h', 0, 0, 1)`, uuid.NewString(), uid); err != nil {
		t.Fatal(err)
	}
	var xid string
	if err := holder.QueryRowContext(ctx, "SELECT pg_current_xact_id()::text").Scan(&xid); err != nil {
		t.Fatal(err)
	}
	a, b := newOrder(uid, "a"), newOrder(uid, "b")
	doneA := make(chan error, 1)
	go func() { doneA <- s.Create(ctx, a, eventFor(t, a.ID)) }()
	// A is in its transaction once it waits for the holder's.
	for deadline := time.Now().Add(10 * time.Second); ; {
		var waiting int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid' AND transactionid::text = $1", xid).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Create A never waited for the uncommitted order")
		}
		time.Sleep(10 * time.Millisecond)
	}
	bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.Create(bctx, b, eventFor(t, b.ID)); err != nil {
		t.Fatalf("Create B while A of the same user is in its transaction: %v (want committed without waiting for A)", err)
	}
	if err := holder.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-doneA; err != nil {
		t.Fatalf("Create A after the holder rolled back: %v", err)
	}
}
