// Package order is the order service: orders placed by users, priced in
// integer minor units of one currency, idempotent on the client's request
// id, checked against the user service through the mesh client. service.go
// holds the use cases, grpc.go the adapter, users.go the user-service
// client adapter, store.go the store and its SQL implementation.
package order

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	"github.com/trellis-mesh/trellis/internal/etag"
	"github.com/trellis-mesh/trellis/internal/eventcontract"
)

// Status is where an order is in its lifecycle; the values match
// orderv1.OrderStatus.
type Status int

// Lifecycle: Pending -> Confirmed -> Cancelled, or Pending -> Cancelled.
const (
	StatusPending   Status = 1
	StatusConfirmed Status = 2
	StatusCancelled Status = 3
)

func (s Status) String() string {
	switch s {
	case StatusPending:
		return "PENDING"
	case StatusConfirmed:
		return "CONFIRMED"
	case StatusCancelled:
		return "CANCELLED"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Events the order service publishes: payloads, subjects and stream are
// the contract's (proto/trellis/events/v1, read by eventcontract).
var (
	SubjectCreated   = eventcontract.Of(&eventsv1.OrderCreated{}).Subject
	SubjectCancelled = eventcontract.Of(&eventsv1.OrderCancelled{}).Subject
	// Stream is the JetStream stream of order events.
	Stream = eventcontract.Of(&eventsv1.OrderCreated{}).Stream
)

const (
	// EventSource is the CloudEvents source of order events.
	EventSource = "/trellis/order"
	// UsersConsumer is the durable consumer keeping the user replica.
	UsersConsumer = "order-users"
)

// Reasons an order is cancelled (OrderCancelled.reason).
const (
	ReasonRequested    = "requested"
	ReasonUserDeleted  = "user_deleted"
	ReasonUserNotFound = "user_not_found"
)

// KnownUser is the order service's replica of a user.
type KnownUser struct {
	ID      string
	Email   string
	Name    string
	Deleted bool
	Version time.Time // time of the event that last changed it
}

// Item is one order line.
type Item struct {
	ProductID string
	Quantity  int32
	UnitPrice int64 // minor units of the order's currency
}

// Order is a placed order.
type Order struct {
	ID             string
	UserID         string
	Items          []Item
	Currency       string
	Total          int64
	Status         Status
	IdempotencyKey string
	PayloadHash    string
	CreateTime     time.Time
	UpdateTime     time.Time
	// Version counts status changes, starting at 1; the etag is made
	// from it.
	Version int64
}

// Etag is the order's AIP-154 etag.
func (o Order) Etag() string { return etag.Of(o.Version) }

// Store errors.
var (
	ErrNotFound            = errors.New("order not found")
	ErrIdempotencyKeyTaken = errors.New("idempotency key already used")
	ErrStatusChanged       = errors.New("order status changed concurrently")
	ErrUnknownUser         = errors.New("user not in the replica")
	ErrUserDeleted         = errors.New("user deleted")
	ErrAlreadyApplied      = errors.New("event already applied")
	errUserNotFound        = errors.New("user not found")
	errUserUnavailable     = errors.New("user service unavailable")
)

// requestHash fingerprints what a request asks for, so a retried request
// id can be told apart from a reused one.
func payloadHash(userID, currency string, items []Item) string {
	h := sha256.New()
	fmt.Fprintf(h, "%q|%q", userID, currency)
	for _, it := range items {
		fmt.Fprintf(h, "|%q,%d,%d", it.ProductID, it.Quantity, it.UnitPrice)
	}
	return hex.EncodeToString(h.Sum(nil))
}
