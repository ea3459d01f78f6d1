package order

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	"github.com/trellis-mesh/trellis/internal/event"
	"github.com/trellis-mesh/trellis/internal/eventcontract"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
)

// UserSubjects are the events the order service consumes: every user
// event (created, updated, deleted), as the contract routes them.
var UserSubjects = []string{eventcontract.StreamSubjects(eventcontract.Of(&eventsv1.UserCreated{}).Stream)}

// HandleUserEvent applies one user event to the replica, exactly once: the
// event id is recorded in the transaction of the change, so a redelivery
// changes nothing (and is reported as eventbus.ErrDuplicate). A deleted
// user's open orders are cancelled in that same transaction, each with its
// order.cancelled event. Events are decoded by their type (ce-type), which
// must be the one the contract routes to the subject they came on.
func (s *Service) HandleUserEvent(ctx context.Context, d eventbus.Delivery) error {
	msg, err := eventcontract.Decode(d.Type, d.Subject, d.Data)
	if err != nil {
		return fmt.Errorf("%w: %v", eventbus.ErrPermanent, err)
	}
	var u KnownUser
	switch ev := msg.(type) {
	case *eventsv1.UserCreated:
		u = KnownUser{ID: ev.GetUserId(), Email: ev.GetEmail(), Name: ev.GetName(), Version: ev.GetCreateTime().AsTime()}
	case *eventsv1.UserUpdated:
		u = KnownUser{ID: ev.GetUserId(), Email: ev.GetEmail(), Name: ev.GetName(), Version: ev.GetUpdateTime().AsTime()}
	case *eventsv1.UserDeleted:
		u = KnownUser{ID: ev.GetUserId(), Deleted: true, Version: ev.GetDeleteTime().AsTime()}
	default:
		return fmt.Errorf("%w: %s is not a user event", eventbus.ErrPermanent, d.Type)
	}
	if u.ID == "" {
		return fmt.Errorf("%w: %s without a user id", eventbus.ErrPermanent, d.Subject)
	}
	now := s.timestamp()
	cancelled, err := s.store.ApplyUser(ctx, UsersConsumer, d.ID, u, func(o Order) (event.Event, error) {
		return cancelledEvent(ctx, o, ReasonUserDeleted, now)
	})
	switch {
	case errors.Is(err, ErrAlreadyApplied):
		return eventbus.ErrDuplicate
	case err != nil:
		return err
	}
	if len(cancelled) > 0 {
		s.committed()
	}
	return nil
}

// Reconcile settles PENDING orders (accepted while the user service could
// not be asked): confirmed if the user exists, cancelled if not. It stops
// at the first order the user service still cannot answer for and returns
// how many orders it settled.
func (s *Service) Reconcile(ctx context.Context) (int, error) {
	pending, err := s.store.ListByStatus(ctx, StatusPending, 100)
	if err != nil {
		return 0, err
	}
	settled := 0
	for _, o := range pending {
		now := s.timestamp()
		switch err := s.users.Exists(ctx, o.UserID); {
		case err == nil:
			err = s.store.SetStatus(ctx, o.ID, StatusPending, StatusConfirmed, now, nil)
			if err != nil && !errors.Is(err, ErrStatusChanged) {
				return settled, err
			}
		case errors.Is(err, errUserNotFound):
			ev, err := cancelledEvent(ctx, o, ReasonUserNotFound, now)
			if err != nil {
				return settled, err
			}
			if err := s.store.SetStatus(ctx, o.ID, StatusPending, StatusCancelled, now, &ev); err != nil && !errors.Is(err, ErrStatusChanged) {
				return settled, err
			}
			s.committed()
		default:
			return settled, err // still unavailable: try again next round
		}
		settled++
	}
	return settled, nil
}

// RunReconciler reconciles every interval until ctx ends.
func (s *Service) RunReconciler(ctx context.Context, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := s.Reconcile(ctx)
		if n > 0 {
			log.Info("reconciled pending orders", "settled", n)
		}
		if err != nil && ctx.Err() == nil {
			log.Debug("reconciler: user service still unavailable", "error", err.Error())
		}
	}
}
