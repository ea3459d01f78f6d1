package order

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
)

// Users is what the order service needs from the user service.
type Users interface {
	// Exists returns nil if the user exists, errUserNotFound if not, and an
	// error wrapping errUserUnavailable when the user service cannot say.
	Exists(ctx context.Context, id string) error
}

// userGetter is the one RPC of userv1.UserServiceClient used here.
type userGetter interface {
	GetUser(ctx context.Context, in *userv1.GetUserRequest, opts ...grpc.CallOption) (*userv1.GetUserResponse, error)
}

// UserClient implements Users over the user service's gRPC API (through a
// mesh connection: breaker, deadline, retry).
type UserClient struct{ c userGetter }

// NewUserClient wraps a UserService client.
func NewUserClient(c userGetter) *UserClient { return &UserClient{c: c} }

// Exists asks the user service for the user.
//
// The check gets at most half of what is left of the caller's deadline:
// when the user service hangs (a replica stopped, a partition) the answer
// "unavailable" still comes in time to take the order PENDING, instead of
// the caller's deadline running out here and the caller counting the
// timeout against this service.
func (u *UserClient) Exists(ctx context.Context, id string) error {
	call := ctx
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		call, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
		defer cancel()
	}
	_, err := u.c.GetUser(call, &userv1.GetUserRequest{Id: id})
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	switch {
	case st.Code() == codes.NotFound:
		return errUserNotFound
	case st.Code() == codes.ResourceExhausted:
		// Shedding load: alive, and saying when to come back.
		return userShedding{st}
	case st.Code() == codes.Unauthenticated || st.Code() == codes.PermissionDenied:
		// The caller's rights, passed on as the user service said them: a
		// refusal, not an outage.
		return st.Err()
	case ctx.Err() != nil:
		return ctx.Err() // the caller's deadline or cancellation
	case errors.Is(err, context.DeadlineExceeded) || st.Code() == codes.DeadlineExceeded:
		return fmt.Errorf("%w: timed out", errUserUnavailable)
	default:
		// The user service's message is already client-safe (its mesh edge
		// made it); it says e.g. that the breaker is open.
		return fmt.Errorf("%w: %s", errUserUnavailable, st.Message())
	}
}

// userShedding is a user service that refused for overload: unavailable
// for now (a known user's order is taken PENDING), but passed on to the
// caller as RESOURCE_EXHAUSTED with its retry delay — never as
// UNAVAILABLE, which the caller's breaker would count.
type userShedding struct{ st *status.Status }

func (e userShedding) Error() string              { return e.st.Message() }
func (e userShedding) Unwrap() error              { return errUserUnavailable }
func (e userShedding) GRPCStatus() *status.Status { return e.st }
