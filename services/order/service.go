package order

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/trellis-mesh/trellis/internal/apperr"
	"github.com/trellis-mesh/trellis/internal/pagetoken"
)

// Service holds the order use cases. Requests reach it already validated
// by Validate (the mesh server runs it first).
type Service struct {
	store Store
	users Users
	now   func() time.Time
}

// NewService returns the order service. now may be nil (time.Now).
func NewService(store Store, users Users, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{store: store, users: users, now: now}
}

func (s *Service) timestamp() time.Time { return s.now().UTC().Truncate(time.Microsecond) }

// CreateInput is what a client asks to order.
type CreateInput struct {
	UserID    string
	Items     []Item
	Currency  string
	RequestID string
}

// Create places an order, idempotently on in.RequestID: a retry with the
// same payload returns the order the first attempt created; a reuse with a
// different payload is refused.
func (s *Service) Create(ctx context.Context, in CreateInput) (Order, error) {
	hash := requestHash(in.UserID, in.Currency, in.Items)
	if o, ok, err := s.replay(ctx, in.RequestID, hash); ok || err != nil {
		return o, err
	}
	switch err := s.users.Exists(ctx, in.UserID); {
	case errors.Is(err, errUserNotFound):
		return Order{}, apperr.NotFound("user %q not found", in.UserID)
	case errors.Is(err, errUserUnavailable):
		return Order{}, apperr.Unavailable("cannot place the order now: %s; retry with the same request_id",
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
		Total: total(in.Items), Status: StatusConfirmed,
		RequestID: in.RequestID, RequestHash: hash, CreateTime: now, UpdateTime: now,
	}
	switch err := s.store.Create(ctx, o); {
	case errors.Is(err, ErrRequestIDTaken): // a concurrent retry won the race
		o, _, err := s.replay(ctx, in.RequestID, hash)
		return o, err
	case err != nil:
		return Order{}, fmt.Errorf("create order: %w", err)
	}
	return o, nil
}

// replay returns the order an earlier request with requestID created, if
// any, or an error if that request asked for something else.
func (s *Service) replay(ctx context.Context, requestID, hash string) (Order, bool, error) {
	o, err := s.store.GetByRequestID(ctx, requestID)
	switch {
	case errors.Is(err, ErrNotFound):
		return Order{}, false, nil
	case err != nil:
		return Order{}, false, fmt.Errorf("look up request id: %w", err)
	case o.RequestHash != hash:
		return Order{}, false, apperr.AlreadyExists(
			"request_id %q was already used for order %s with a different payload; use a new request_id for a new order", requestID, o.ID)
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

// Get returns one order.
func (s *Service) Get(ctx context.Context, id string) (Order, error) {
	o, err := s.store.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return Order{}, apperr.NotFound("order %q not found", id)
	}
	return o, err
}

// List returns one page of a user's orders, newest first, and the next
// page's token ("" at the end).
func (s *Service) List(ctx context.Context, userID string, pageSize int32, token string) ([]Order, string, error) {
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
	if len(orders) <= size {
		return orders, "", nil
	}
	orders = orders[:size]
	return orders, pagetoken.Encode(orders[size-1].ID, scope), nil
}

// Cancel cancels a pending or confirmed order. Cancelling a cancelled order
// is FAILED_PRECONDITION: the lifecycle has no way back.
func (s *Service) Cancel(ctx context.Context, id string) (Order, error) {
	for range 3 { // retried only if the status changes under us
		o, err := s.Get(ctx, id)
		if err != nil {
			return Order{}, err
		}
		if o.Status == StatusCancelled {
			return Order{}, apperr.FailedPrecondition("order %q is already cancelled", id)
		}
		now := s.timestamp()
		switch err := s.store.SetStatus(ctx, id, o.Status, StatusCancelled, now); {
		case errors.Is(err, ErrStatusChanged):
			continue
		case errors.Is(err, ErrNotFound):
			return Order{}, apperr.NotFound("order %q not found", id)
		case err != nil:
			return Order{}, fmt.Errorf("cancel order: %w", err)
		}
		o.Status, o.UpdateTime = StatusCancelled, now
		return o, nil
	}
	return Order{}, apperr.Unavailable("order %q is being changed concurrently; retry", id)
}
