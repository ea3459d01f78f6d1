package order

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
)

// UserSubjects are the events the order service consumes: every user
// event (created, updated, deleted).
var UserSubjects = []string{"trellis.user.v1.>"}

// HandleUserEvent applies one user event to the replica, exactly once: the
// event id is recorded in the transaction of the change, so a redelivery
// changes nothing (and is reported as eventbus.ErrDuplicate). A deleted user's open orders are cancelled in that same
// transaction, each with its order.cancelled event.
func (s *Service) HandleUserEvent(ctx context.Context, d eventbus.Delivery) error {
	var u KnownUser
	switch d.Subject {
	case "trellis.user.v1.created":
		var ev eventsv1.UserCreated
		if err := proto.Unmarshal(d.Data, &ev); err != nil {
			return fmt.Errorf("%w: decode %s: %v", eventbus.ErrPermanent, d.Subject, err)
		}
		u = KnownUser{ID: ev.GetUserId(), Email: ev.GetEmail(), Name: ev.GetName(), Version: ev.GetCreateTime().AsTime()}
	case "trellis.user.v1.updated":
		var ev eventsv1.UserUpdated
		if err := proto.Unmarshal(d.Data, &ev); err != nil {
			return fmt.Errorf("%w: decode %s: %v", eventbus.ErrPermanent, d.Subject, err)
		}
		u = KnownUser{ID: ev.GetUserId(), Email: ev.GetEmail(), Name: ev.GetName(), Version: ev.GetUpdateTime().AsTime()}
	case "trellis.user.v1.deleted":
		var ev eventsv1.UserDeleted
		if err := proto.Unmarshal(d.Data, &ev); err != nil {
			return fmt.Errorf("%w: decode %s: %v", eventbus.ErrPermanent, d.Subject, err)
		}
		u = KnownUser{ID: ev.GetUserId(), Deleted: true, Version: ev.GetDeleteTime().AsTime()}
	default:
		return fmt.Errorf("%w: unexpected subject %s", eventbus.ErrPermanent, d.Subject)
	}
	if u.ID == "" {
		return fmt.Errorf("%w: %s without a user id", eventbus.ErrPermanent, d.Subject)
	}
	now := s.timestamp()
	cancelled, err := s.store.ApplyUser(ctx, UsersConsumer, d.ID, u, func(o Order) (eventbus.Event, error) {
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
