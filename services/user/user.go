// Package user is the user service: accounts with a unique email, a name
// and a password kept only as a bcrypt hash. service.go holds the use cases,
// grpc.go the thin gRPC adapter, store.go the store interface and its SQL
// implementation for SQLite and PostgreSQL.
package user

import (
	"errors"
	"time"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	"github.com/trellis-mesh/trellis/internal/etag"
	"github.com/trellis-mesh/trellis/internal/eventcontract"
)

// User is an account. PasswordHash never leaves the package boundary
// towards clients: the adapter does not copy it.
type User struct {
	ID           string
	Email        string
	Name         string
	PasswordHash string
	CreateTime   time.Time
	UpdateTime   time.Time
	// Roles are the user's roles ("admin"); only `trellis users
	// grant-admin` sets them.
	Roles []string
	// Version counts changes, starting at 1; the etag is made from it.
	Version int64
}

// Etag is the user's AIP-154 etag.
func (u User) Etag() string { return etag.Of(u.Version) }

// Events the user service publishes: payloads, subjects and stream are the
// contract's (proto/trellis/events/v1, read by eventcontract).
var (
	SubjectCreated = eventcontract.Of(&eventsv1.UserCreated{}).Subject
	SubjectUpdated = eventcontract.Of(&eventsv1.UserUpdated{}).Subject
	SubjectDeleted = eventcontract.Of(&eventsv1.UserDeleted{}).Subject
	// Stream is the JetStream stream of user events.
	Stream = eventcontract.Of(&eventsv1.UserCreated{}).Stream
)

// EventSource is the CloudEvents source of user events.
const EventSource = "/trellis/user"

// Store errors; the use cases turn them into client-facing errors.
var (
	ErrNotFound   = errors.New("user not found")
	ErrEmailTaken = errors.New("email already registered")
	// ErrStale: a conditional change whose version no longer matches.
	ErrStale = errors.New("user changed since the etag was read")
)
