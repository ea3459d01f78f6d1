package user_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	"github.com/trellis-mesh/trellis/internal/event"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/services/user"
)

// TestStoreConformance runs one suite against every backend: whatever the
// service relies on must hold on SQLite and PostgreSQL alike.
func TestStoreConformance(t *testing.T) {
	t.Parallel()
	for _, d := range testenv.Backends {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			newStore := func(t *testing.T) *user.SQLStore {
				s, err := user.NewSQLStore(context.Background(), testenv.OpenDB(t, d, "user"))
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			for name, test := range storeTests {
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					test(t, newStore(t))
				})
			}
		})
	}
}

// event is a stand-in event; the store does not look inside payloads.
func testEvent(t *testing.T, subject string) event.Event {
	t.Helper()
	ev, err := event.New("", subject, user.EventSource, uuid.NewString(), &eventsv1.UserDeleted{}, base)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// pendingSubjects lists the unsent outbox events in commit order.
func pendingSubjects(t *testing.T, s *user.SQLStore) []string {
	t.Helper()
	evs, err := s.Outbox().Pending(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Subject)
	}
	return out
}

var base = time.Date(2026, 11, 1, 12, 0, 0, 123456000, time.UTC)

func newUser(i int) user.User {
	id, _ := uuid.NewV7()
	return user.User{
		ID: id.String(), Email: fmt.Sprintf("u%d@example.com", i), Name: fmt.Sprintf("User %d", i),
		PasswordHash: "$2a$04$hash", CreateTime: base, UpdateTime: base, Version: 1,
	}
}

var storeTests = map[string]func(t *testing.T, s *user.SQLStore){
	"create then get returns the same user": func(t *testing.T, s *user.SQLStore) {
		ctx := context.Background()
		want := newUser(1)
		if err := s.Create(ctx, want, testEvent(t, user.SubjectCreated)); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, want.ID)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Get mismatch (-want +got):\n%s", diff)
		}
	},
	"email is unique case-insensitively": func(t *testing.T, s *user.SQLStore) {
		ctx := context.Background()
		a, b := newUser(1), newUser(2)
		b.Email = "U1@EXAMPLE.com"
		if err := s.Create(ctx, a, testEvent(t, user.SubjectCreated)); err != nil {
			t.Fatal(err)
		}
		if err := s.Create(ctx, b, testEvent(t, user.SubjectCreated)); !errors.Is(err, user.ErrEmailTaken) {
			t.Fatalf("Create duplicate email: got %v, want ErrEmailTaken", err)
		}
	},
	"missing ids are ErrNotFound": func(t *testing.T, s *user.SQLStore) {
		ctx := context.Background()
		id := uuid.NewString()
		if _, err := s.Get(ctx, id); !errors.Is(err, user.ErrNotFound) {
			t.Errorf("Get: got %v, want ErrNotFound", err)
		}
		if err := s.Delete(ctx, id, 0, testEvent(t, user.SubjectDeleted)); !errors.Is(err, user.ErrNotFound) {
			t.Errorf("Delete: got %v, want ErrNotFound", err)
		}
		if _, err := update(t, s, newUser(1).ID, user.Patch{Name: ptr("x")}, 0); !errors.Is(err, user.ErrNotFound) {
			t.Errorf("Update: got %v, want ErrNotFound", err)
		}
		if _, err := update(t, s, newUser(1).ID, user.Patch{Name: ptr("x")}, 1); !errors.Is(err, user.ErrNotFound) {
			t.Errorf("conditional Update: got %v, want ErrNotFound", err)
		}
	},
	"list pages by id": func(t *testing.T, s *user.SQLStore) {
		ctx := context.Background()
		var ids []string
		for i := range 5 {
			u := newUser(i)
			ids = append(ids, u.ID)
			if err := s.Create(ctx, u, testEvent(t, user.SubjectCreated)); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		after := ""
		for {
			page, err := s.List(ctx, after, 2)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			for _, u := range page {
				got = append(got, u.ID)
			}
			after = page[len(page)-1].ID
		}
		if diff := cmp.Diff(ids, got); diff != "" {
			t.Errorf("paged ids (-want +got):\n%s", diff)
		}
	},
	"get many returns only existing users": func(t *testing.T, s *user.SQLStore) {
		ctx := context.Background()
		a, b := newUser(1), newUser(2)
		for _, u := range []user.User{a, b} {
			if err := s.Create(ctx, u, testEvent(t, user.SubjectCreated)); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.GetMany(ctx, []string{b.ID, uuid.NewString(), a.ID})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 {
			t.Fatalf("GetMany: got %d users, want 2", len(got))
		}
	},
	"update changes email and name; a taken email is refused": func(t *testing.T, s *user.SQLStore) {
		ctx := context.Background()
		a, b := newUser(1), newUser(2)
		for _, u := range []user.User{a, b} {
			if err := s.Create(ctx, u, testEvent(t, user.SubjectCreated)); err != nil {
				t.Fatal(err)
			}
		}
		a.Email, a.Name, a.UpdateTime, a.Version = "new@example.com", "New", base.Add(time.Hour), 2
		returned, err := update(t, s, a.ID, user.Patch{Email: &a.Email, Name: &a.Name}, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range []user.User{returned, got} {
			if diff := cmp.Diff(a, u); diff != "" {
				t.Errorf("after update (-want +got):\n%s", diff)
			}
		}
		if _, err := update(t, s, b.ID, user.Patch{Email: ptr("NEW@example.com")}, 0); !errors.Is(err, user.ErrEmailTaken) {
			t.Errorf("Update to taken email: got %v, want ErrEmailTaken", err)
		}
	},
	"conditional changes need the current version": func(t *testing.T, s *user.SQLStore) {
		ctx := context.Background()
		a := newUser(1)
		if err := s.Create(ctx, a, testEvent(t, user.SubjectCreated)); err != nil {
			t.Fatal(err)
		}
		if _, err := update(t, s, a.ID, user.Patch{Name: ptr("One")}, 1); err != nil {
			t.Fatal(err)
		}
		if _, err := update(t, s, a.ID, user.Patch{Name: ptr("Two")}, 1); !errors.Is(err, user.ErrStale) {
			t.Errorf("Update at a stale version: got %v, want ErrStale", err)
		}
		if err := s.Delete(ctx, a.ID, 1, testEvent(t, user.SubjectDeleted)); !errors.Is(err, user.ErrStale) {
			t.Errorf("Delete at a stale version: got %v, want ErrStale", err)
		}
		if err := s.Delete(ctx, a.ID, 2, testEvent(t, user.SubjectDeleted)); err != nil {
			t.Errorf("Delete at the current version: %v", err)
		}
	},
	"concurrent updates of different fields both stick": func(t *testing.T, s *user.SQLStore) {
		ctx := context.Background()
		for i := range 20 {
			u := newUser(100 + i)
			if err := s.Create(ctx, u, testEvent(t, user.SubjectCreated)); err != nil {
				t.Fatal(err)
			}
			email, name := "changed"+u.Email, "Changed"
			var wg sync.WaitGroup
			for _, p := range []user.Patch{{Email: &email}, {Name: &name}} {
				wg.Go(func() {
					if _, err := update(t, s, u.ID, p, 0); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			got, err := s.Get(ctx, u.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Email != email || got.Name != name || got.Version != 3 {
				t.Errorf("after concurrent updates: %q %q v%d, want %q %q v3 (a lost update)", got.Email, got.Name, got.Version, email, name)
			}
		}
	},
	"every change writes its event; failed changes write none": func(t *testing.T, s *user.SQLStore) {
		ctx := context.Background()
		a := newUser(1)
		if err := s.Create(ctx, a, testEvent(t, user.SubjectCreated)); err != nil {
			t.Fatal(err)
		}
		dup := newUser(2)
		dup.Email = a.Email
		if err := s.Create(ctx, dup, testEvent(t, user.SubjectCreated)); !errors.Is(err, user.ErrEmailTaken) {
			t.Fatalf("duplicate: %v", err)
		}
		if _, err := update(t, s, newUser(3).ID, user.Patch{Name: ptr("x")}, 0); !errors.Is(err, user.ErrNotFound) {
			t.Fatalf("update missing: %v", err)
		}
		if _, err := update(t, s, a.ID, user.Patch{Name: ptr("x")}, 7); !errors.Is(err, user.ErrStale) {
			t.Fatalf("update stale: %v", err)
		}
		if err := s.Delete(ctx, uuid.NewString(), 0, testEvent(t, user.SubjectDeleted)); !errors.Is(err, user.ErrNotFound) {
			t.Fatalf("delete missing: %v", err)
		}
		if _, err := update(t, s, a.ID, user.Patch{Name: ptr("Renamed")}, 0); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, a.ID, 0, testEvent(t, user.SubjectDeleted)); err != nil {
			t.Fatal(err)
		}
		want := []string{user.SubjectCreated, user.SubjectUpdated, user.SubjectDeleted}
		if diff := cmp.Diff(want, pendingSubjects(t, s)); diff != "" {
			t.Errorf("outbox (-want +got):\n%s", diff)
		}
	},
	"delete removes the user": func(t *testing.T, s *user.SQLStore) {
		ctx := context.Background()
		u := newUser(1)
		if err := s.Create(ctx, u, testEvent(t, user.SubjectCreated)); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, u.ID, 0, testEvent(t, user.SubjectDeleted)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, u.ID); !errors.Is(err, user.ErrNotFound) {
			t.Errorf("Get after delete: got %v, want ErrNotFound", err)
		}
		// The email is free again.
		if err := s.Create(ctx, newUser(1), testEvent(t, user.SubjectCreated)); err != nil {
			t.Errorf("re-create with freed email: %v", err)
		}
	},
}

func ptr(s string) *string { return &s }

// update runs a store update with an updated-event and the update time of
// the tests (base + 1h).
func update(t *testing.T, s *user.SQLStore, id string, p user.Patch, ifVersion int64) (user.User, error) {
	t.Helper()
	return s.Update(context.Background(), id, p, ifVersion, base.Add(time.Hour), func(user.User) (event.Event, error) {
		return testEvent(t, user.SubjectUpdated), nil
	})
}
