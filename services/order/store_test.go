package order_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"

	"github.com/trellis-mesh/trellis/internal/testenv"
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

var base = time.Date(2026, 11, 1, 12, 0, 0, 654321000, time.UTC)

func newOrder(userID, requestID string) order.Order {
	id, _ := uuid.NewV7()
	return order.Order{
		ID: id.String(), UserID: userID, Currency: "EUR", Total: 2600, Status: order.StatusConfirmed,
		Items: []order.Item{
			{ProductID: "p1", Quantity: 2, UnitPrice: 1250},
			{ProductID: "p2", Quantity: 1, UnitPrice: 100},
		},
		RequestID: requestID, RequestHash: "h-" + requestID, CreateTime: base, UpdateTime: base,
	}
}

var storeTests = map[string]func(t *testing.T, s order.Store){
	"create then get returns the order with its items in order": func(t *testing.T, s order.Store) {
		ctx := context.Background()
		want := newOrder(uuid.NewString(), "r1")
		if err := s.Create(ctx, want); err != nil {
			t.Fatal(err)
		}
		for _, get := range []func() (order.Order, error){
			func() (order.Order, error) { return s.Get(ctx, want.ID) },
			func() (order.Order, error) { return s.GetByRequestID(ctx, "r1") },
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
	"request id is unique and a failed create leaves nothing": func(t *testing.T, s order.Store) {
		ctx := context.Background()
		first := newOrder(uuid.NewString(), "r1")
		if err := s.Create(ctx, first); err != nil {
			t.Fatal(err)
		}
		dup := newOrder(first.UserID, "r1")
		if err := s.Create(ctx, dup); !errors.Is(err, order.ErrRequestIDTaken) {
			t.Fatalf("Create with used request id: got %v, want ErrRequestIDTaken", err)
		}
		if _, err := s.Get(ctx, dup.ID); !errors.Is(err, order.ErrNotFound) {
			t.Errorf("rolled-back order is readable: %v", err)
		}
	},
	"list by user is newest first and pages": func(t *testing.T, s order.Store) {
		ctx := context.Background()
		userID := uuid.NewString()
		var want []string
		for i := range 5 {
			o := newOrder(userID, "r"+string(rune('a'+i)))
			want = append([]string{o.ID}, want...)
			if err := s.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Create(ctx, newOrder(uuid.NewString(), "other")); err != nil {
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
	"set status is conditional": func(t *testing.T, s order.Store) {
		ctx := context.Background()
		o := newOrder(uuid.NewString(), "r1")
		if err := s.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
		at := base.Add(time.Minute)
		if err := s.SetStatus(ctx, o.ID, order.StatusConfirmed, order.StatusCancelled, at); err != nil {
			t.Fatal(err)
		}
		if err := s.SetStatus(ctx, o.ID, order.StatusConfirmed, order.StatusCancelled, at); !errors.Is(err, order.ErrStatusChanged) {
			t.Errorf("second SetStatus from CONFIRMED: got %v, want ErrStatusChanged", err)
		}
		if err := s.SetStatus(ctx, uuid.NewString(), order.StatusConfirmed, order.StatusCancelled, at); !errors.Is(err, order.ErrNotFound) {
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
