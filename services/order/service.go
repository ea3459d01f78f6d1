package order

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	"github.com/trellis-mesh/trellis/internal/apperr"
	"github.com/trellis-mesh/trellis/internal/etag"
	"github.com/trellis-mesh/trellis/internal/event"
	"github.com/trellis-mesh/trellis/internal/pagetoken"
	"github.com/trellis-mesh/trellis/mesh"
)

// Service holds the order use cases. Requests reach it already validated
// by Validate (the mesh server runs it first).
type Service struct {
	store     Store
	users     Users
	now       func() time.Time
	committed func()
}

// Config tunes the order service.
type Config struct {
	// ReconcileInterval is how often RunReconciler checks PENDING orders.
	ReconcileInterval time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Committed is called after changes with events committed (the outbox
	// relay's Notify); nil means nobody is told.
	Committed func()
}

// DefaultReconcileInterval is how often PENDING orders are checked unless
// configured.
const DefaultReconcileInterval = 5 * time.Second

// RegisterFlags defines reconcile-interval, prefixed.
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.DurationVar(&c.ReconcileInterval, prefix+"reconcile-interval", DefaultReconcileInterval, "how often PENDING orders are checked with the user service")
}

// Validate reports settings that cannot work.
func (c *Config) Validate() error {
	if c.ReconcileInterval <= 0 {
		return errors.New("--reconcile-interval must be positive")
	}
	return nil
}

// NewService returns the order service.
func NewService(store Store, users Users, cfg Config) *Service {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Committed == nil {
		cfg.Committed = func() {}
	}
	return &Service{store: store, users: users, now: cfg.Now, committed: cfg.Committed}
}

func (s *Service) timestamp() time.Time { return s.now().UTC().Truncate(time.Microsecond) }

// CreateInput is what a client asks to order.
type CreateInput struct {
	UserID         string
	Items          []Item
	Currency       string
	IdempotencyKey string
}

// Create places an order, idempotently on in.IdempotencyKey: a retry with the
// same payload returns the order the first attempt created; a reuse with a
// different payload is refused.
//
// The user is checked with the user service: an existing user gets a
// CONFIRMED order. When the user service cannot answer (breaker open,
// unreachable), a user known to the local replica (kept from user events)
// still gets an order, PENDING, which the reconciler confirms or cancels
// once the user service answers; an unknown user gets UNAVAILABLE. A user
// the replica knows as deleted gets no new orders at all.
func (s *Service) Create(ctx context.Context, in CreateInput) (Order, error) {
	if !mayAccess(mesh.PrincipalFrom(ctx), in.UserID) {
		// Orders are placed by their user (or an admin); for anyone else
		// the user does not exist.
		return Order{}, apperr.NotFound("user %q not found", in.UserID)
	}
	hash := payloadHash(in.UserID, in.Currency, in.Items)
	if o, ok, err := s.replay(ctx, in.UserID, in.IdempotencyKey, hash); ok || err != nil {
		return o, err
	}
	known, err := s.store.KnownUser(ctx, in.UserID)
	if err != nil && !errors.Is(err, ErrUnknownUser) {
		return Order{}, fmt.Errorf("read user replica: %w", err)
	}
	if err == nil && known.Deleted {
		return Order{}, apperr.NotFound("user %q not found: the user was deleted", in.UserID)
	}
	status := StatusConfirmed
	// Checked on the user's behalf: the user service applies the user's
	// rights, not the order service's.
	switch err := s.users.Exists(mesh.ForwardToken(ctx), in.UserID); {
	case errors.Is(err, errUserNotFound):
		return Order{}, apperr.NotFound("user %q not found", in.UserID)
	case errors.Is(err, errUserUnavailable) && known.ID != "":
		status = StatusPending // degrade: confirmed later by the reconciler
	case errors.As(err, new(userShedding)):
		return Order{}, err // RESOURCE_EXHAUSTED with the user service's retry delay
	case errors.Is(err, errUserUnavailable):
		return Order{}, apperr.DependencyUnavailable("user", "cannot place the order now: %s; retry with the same request_id",
			strings.TrimPrefix(err.Error(), errUserUnavailable.Error()+": "))
	case err != nil:
		return Order{}, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return Order{}, err
	}
	now := s.timestamp()
	o := Order{
		ID: id.String(), UserID: in.UserID, Items: in.Items, Currency: in.Currency,
		Total: total(in.Items), Status: status, Version: 1,
		IdempotencyKey: in.IdempotencyKey, PayloadHash: hash, CreateTime: now, UpdateTime: now,
	}
	ev, err := event.New(mesh.TraceParent(ctx), SubjectCreated, EventSource, o.ID, &eventsv1.OrderCreated{
		OrderId: o.ID, UserId: o.UserID, TotalAmountMinor: o.Total, CurrencyCode: o.Currency, CreateTime: timestamppb.New(now)}, now)
	if err != nil {
		return Order{}, err
	}
	switch err := s.store.Create(ctx, o, ev); {
	case errors.Is(err, ErrIdempotencyKeyTaken): // a concurrent retry won the race
		o, _, err := s.replay(ctx, in.UserID, in.IdempotencyKey, hash)
		return o, err
	case errors.Is(err, ErrUserDeleted): // deleted while we asked
		return Order{}, apperr.NotFound("user %q not found: the user was deleted", in.UserID)
	case err != nil:
		return Order{}, fmt.Errorf("create order: %w", err)
	}
	s.committed()
	return o, nil
}

// cancelledEvent is the event of cancelling o for reason at a time.
func cancelledEvent(ctx context.Context, o Order, reason string, at time.Time) (event.Event, error) {
	return event.New(mesh.TraceParent(ctx), SubjectCancelled, EventSource, o.ID, &eventsv1.OrderCancelled{
		OrderId: o.ID, UserId: o.UserID, Reason: reason, CancelTime: timestamppb.New(at)}, at)
}

// replay returns the order an earlier request of the user with idempotency key key
// created, if any, or an error if that request asked for something else.
// Keys are per user: another user's key is never found here.
func (s *Service) replay(ctx context.Context, userID, key, hash string) (Order, bool, error) {
	o, err := s.store.GetByIdempotencyKey(ctx, userID, key)
	switch {
	case errors.Is(err, ErrNotFound):
		return Order{}, false, nil
	case err != nil:
		return Order{}, false, fmt.Errorf("look up request id: %w", err)
	case o.PayloadHash != hash:
		return Order{}, false, apperr.AlreadyExists(
			"request_id %q was already used for order %s with a different payload; use a new request_id for a new order", key, o.ID)
	}
	return o, true, nil
}

func total(items []Item) int64 {
	var t int64
	for _, it := range items {
		t += int64(it.Quantity) * it.UnitPrice
	}
	return t
}

// Get returns one order to its user or an admin; for anyone else it does
// not exist.
func (s *Service) Get(ctx context.Context, id string) (Order, error) {
	o, err := s.store.Get(ctx, id)
	if errors.Is(err, ErrNotFound) || err == nil && !mayAccess(mesh.PrincipalFrom(ctx), o.UserID) {
		return Order{}, apperr.NotFound("order %q not found", id)
	}
	return o, err
}

// mayAccess reports whether the principal may see and change the orders
// of user userID: the user or an admin.
func mayAccess(p *mesh.Principal, userID string) bool { return p.Is(userID) || p.Admin() }

// List returns one page of a user's orders, newest first, and the next
// page's token ("" at the end).
func (s *Service) List(ctx context.Context, userID string, pageSize int32, token string) ([]Order, string, error) {
	if !mayAccess(mesh.PrincipalFrom(ctx), userID) {
		return nil, "", apperr.NotFound("user %q not found", userID)
	}
	scope := "orders:" + userID
	before, err := pagetoken.Decode(token, scope)
	if err != nil {
		return nil, "", apperr.Invalid(apperr.Violation("page_token", "not a token returned by ListOrders for this user_id"))
	}
	size := pagetoken.Size(pageSize, DefaultPage, MaxPage)
	orders, err := s.store.ListByUser(ctx, userID, before, size+1)
	if err != nil {
		return nil, "", fmt.Errorf("list orders: %w", err)
	}
	page, next := pagetoken.Page(orders, size, scope, encodedSize, func(o Order) string { return o.ID })
	return page, next, nil
}

// encodedSize is about what an order takes on the wire (protobuf), a
// little over: field tags, ids, times, per-line overhead.
func encodedSize(o Order) int {
	n := 160 + len(o.IdempotencyKey)
	for _, it := range o.Items {
		n += 40 + len(it.ProductID)
	}
	return n
}

// Cancel cancels a pending or confirmed order. Cancelling a cancelled order
// is FAILED_PRECONDITION: the lifecycle has no way back. With a non-empty
// etag, only the version the client read is cancelled (ABORTED if it
// changed). The version changes only with the status, so the store's
// status condition also holds the version.
func (s *Service) Cancel(ctx context.Context, id, tag string) (Order, error) {
	ifVersion, err := etag.Condition(tag)
	if err != nil {
		return Order{}, err
	}
	for range 3 { // retried only if the status changes under us
		o, err := s.Get(ctx, id)
		if err != nil {
			return Order{}, err
		}
		if ifVersion != 0 && o.Version != ifVersion {
			return Order{}, apperr.Aborted("order %q was changed since its etag was read; read it again", id)
		}
		if o.Status == StatusCancelled {
			return Order{}, apperr.FailedPrecondition("order %q is already cancelled", id)
		}
		now := s.timestamp()
		ev, err := cancelledEvent(ctx, o, ReasonRequested, now)
		if err != nil {
			return Order{}, err
		}
		switch err := s.store.SetStatus(ctx, id, o.Status, StatusCancelled, now, &ev); {
		case errors.Is(err, ErrStatusChanged):
			continue
		case errors.Is(err, ErrNotFound):
			return Order{}, apperr.NotFound("order %q not found", id)
		case err != nil:
			return Order{}, fmt.Errorf("cancel order: %w", err)
		}
		o.Status, o.UpdateTime, o.Version = StatusCancelled, now, o.Version+1
		s.committed()
		return o, nil
	}
	return Order{}, apperr.Unavailable("order %q is being changed concurrently; retry", id)
}
