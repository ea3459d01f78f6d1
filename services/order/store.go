package order

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/event"
	"github.com/trellis-mesh/trellis/internal/outbox"
	"github.com/trellis-mesh/trellis/internal/sqldb"
)

// Store keeps orders and the replica of users. Every change is stored with
// its events, atomically.
type Store interface {
	// Create inserts o with its items and event; ErrIdempotencyKeyTaken if
	// the user already used o.IdempotencyKey; ErrUserDeleted if the replica
	// knows o.UserID as deleted when the order would commit (checked in
	// the same transaction, serialised with ApplyUser on the replica row,
	// so an order never survives its user's deletion event).
	Create(ctx context.Context, o Order, ev event.Event) error
	Get(ctx context.Context, id string) (Order, error)
	// GetByIdempotencyKey returns the order userID created with idempotency key key.
	GetByIdempotencyKey(ctx context.Context, userID, key string) (Order, error)
	// ListByUser returns up to limit of the user's orders with id < before
	// ("" for the newest), newest first.
	ListByUser(ctx context.Context, userID, before string, limit int) ([]Order, error)
	// SetStatus moves order id from status from to status to, with ev
	// when not nil; ErrNotFound if there is no such order,
	// ErrStatusChanged if its status is not from.
	SetStatus(ctx context.Context, id string, from, to Status, at time.Time, ev *event.Event) error
	// ListByStatus returns up to limit orders in status, oldest first.
	ListByStatus(ctx context.Context, status Status, limit int) ([]Order, error)
	// KnownUser returns the replica of a user; ErrUnknownUser if none.
	KnownUser(ctx context.Context, id string) (KnownUser, error)
	// ApplyUser records that consumer applied event eventID, updates the
	// replica with u (unless it holds a newer version) and, if u is
	// deleted, cancels the user's open orders, each with the event
	// cancelled(order) returns — all in one transaction. An event applied
	// before returns ErrAlreadyApplied and changes nothing.
	ApplyUser(ctx context.Context, consumer, eventID string, u KnownUser, cancelled func(Order) (event.Event, error)) ([]Order, error)
	Ping(ctx context.Context) error
}

//go:embed migrations
var migrations embed.FS

// SQLStore is the Store on SQLite or PostgreSQL, with the outbox in the
// same database.
type SQLStore struct {
	*outbox.Base
	db *sqldb.DB
}

// NewSQLStore applies the order and outbox migrations to db and returns the
// store.
func NewSQLStore(ctx context.Context, db *sqldb.DB) (*SQLStore, error) {
	base, err := outbox.NewBase(ctx, db, "order", migrations, "migrations")
	if err != nil {
		return nil, err
	}
	return &SQLStore{Base: base, db: db}, nil
}

const orderColumns = "id, user_id, status, currency, total_minor, idempotency_key, payload_hash, create_time, update_time, version"

// Create inserts the order, its items and its event in one transaction.
func (s *SQLStore) Create(ctx context.Context, o Order, ev event.Event) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		deleted, err := s.lockKnownUser(ctx, tx, o.UserID)
		if err != nil {
			return err
		}
		if deleted {
			return ErrUserDeleted
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO orders ("+orderColumns+") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
			o.ID, o.UserID, int(o.Status), o.Currency, o.Total, o.IdempotencyKey, o.PayloadHash,
			o.CreateTime.UnixMicro(), o.UpdateTime.UnixMicro(), max(o.Version, 1)); err != nil {
			return err
		}
		for i, it := range o.Items {
			if _, err := tx.ExecContext(ctx, "INSERT INTO order_items (order_id, line, product_id, quantity, unit_price_minor) VALUES ($1, $2, $3, $4, $5)",
				o.ID, i, it.ProductID, it.Quantity, it.UnitPrice); err != nil {
				return err
			}
		}
		return outbox.Add(ctx, tx, ev)
	})
	if sqldb.IsUniqueViolation(err) {
		return ErrIdempotencyKeyTaken
	}
	return err
}

// lockKnownUser locks the user's replica row for the rest of tx (writing
// a placeholder when the replica has not heard of the user yet; events
// overwrite it) and tells whether the user was deleted. ApplyUser's
// tombstone takes the row's write lock, so a Create and a deletion are
// serialised: either the deletion commits first and Create sees its
// tombstone, or Create commits first and the deletion's sweep sees the
// order.
//
// On PostgreSQL the lock is shared (FOR SHARE): Creates of one user do not
// wait for each other, only for a deletion — with the write lock an upsert
// takes, every order of a user waited for the one before it to commit,
// and one user's orders topped out near 300/s on the split system. SQLite
// has no row locks: the transaction holds the database's write lock from
// BEGIN (_txlock=immediate), and the upsert is what it reads.
func (s *SQLStore) lockKnownUser(ctx context.Context, tx *sql.Tx, userID string) (deleted bool, err error) {
	var d int
	if s.db.Dialect == sqldb.SQLite {
		err := tx.QueryRowContext(ctx, `INSERT INTO known_users (id, email, name, deleted, version) VALUES ($1, '', '', 0, 0)
			ON CONFLICT (id) DO UPDATE SET version = known_users.version RETURNING deleted`, userID).Scan(&d)
		return d != 0, err
	}
	for range 2 {
		// READ COMMITTED: a row a deletion is writing is waited for and
		// read as the deletion left it.
		err := tx.QueryRowContext(ctx, "SELECT deleted FROM known_users WHERE id = $1 FOR SHARE", userID).Scan(&d)
		if !errors.Is(err, sql.ErrNoRows) {
			return d != 0, err
		}
		// Not there: write the placeholder (or, when another transaction
		// is writing the row, wait for it) and read it again.
		if _, err := tx.ExecContext(ctx, `INSERT INTO known_users (id, email, name, deleted, version) VALUES ($1, '', '', 0, 0)
			ON CONFLICT (id) DO NOTHING`, userID); err != nil {
			return false, err
		}
	}
	return false, errors.New("order store: the user's replica row is missing after it was written")
}

// Get returns the order with id.
func (s *SQLStore) Get(ctx context.Context, id string) (Order, error) {
	return s.getOne(ctx, "id = $1", id)
}

// GetByIdempotencyKey returns the order userID created with idempotency key key.
func (s *SQLStore) GetByIdempotencyKey(ctx context.Context, userID, key string) (Order, error) {
	return s.getOne(ctx, "user_id = $1 AND idempotency_key = $2", userID, key)
}

func (s *SQLStore) getOne(ctx context.Context, where string, args ...any) (Order, error) {
	os, err := s.query(ctx, "SELECT "+orderColumns+" FROM orders WHERE "+where, args...)
	if err != nil {
		return Order{}, err
	}
	if len(os) == 0 {
		return Order{}, ErrNotFound
	}
	return os[0], nil
}

// ListByUser returns a page of the user's orders, newest first.
func (s *SQLStore) ListByUser(ctx context.Context, userID, before string, limit int) ([]Order, error) {
	if before == "" {
		return s.query(ctx, "SELECT "+orderColumns+" FROM orders WHERE user_id = $1 ORDER BY id DESC LIMIT $2", userID, limit)
	}
	return s.query(ctx, "SELECT "+orderColumns+" FROM orders WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3", userID, before, limit)
}

// query reads orders, then their items in one more query.
func (s *SQLStore) query(ctx context.Context, q string, args ...any) ([]Order, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	out, err := scanOrders(rows)
	if err != nil || len(out) == 0 {
		return out, err
	}
	return out, s.loadItems(ctx, out)
}

// scanOrders reads and closes rows of orderColumns (items not loaded).
func scanOrders(rows *sql.Rows) ([]Order, error) {
	defer rows.Close()
	var out []Order
	for rows.Next() {
		var o Order
		var status int
		var created, updated int64
		if err := rows.Scan(&o.ID, &o.UserID, &status, &o.Currency, &o.Total, &o.IdempotencyKey, &o.PayloadHash, &created, &updated, &o.Version); err != nil {
			return nil, err
		}
		o.Status = Status(status)
		o.CreateTime, o.UpdateTime = time.UnixMicro(created).UTC(), time.UnixMicro(updated).UTC()
		out = append(out, o)
	}
	return out, rows.Err()
}

// loadItems fills in the items of orders.
func (s *SQLStore) loadItems(ctx context.Context, out []Order) error {
	index := make(map[string]int, len(out))
	for i, o := range out {
		index[o.ID] = i
	}
	ph := make([]string, len(out))
	ids := make([]any, len(out))
	for i, o := range out {
		ph[i] = fmt.Sprintf("$%d", i+1)
		ids[i] = o.ID
	}
	items, err := s.db.QueryContext(ctx, "SELECT order_id, product_id, quantity, unit_price_minor FROM order_items WHERE order_id IN ("+
		strings.Join(ph, ", ")+") ORDER BY order_id, line", ids...)
	if err != nil {
		return err
	}
	defer items.Close()
	for items.Next() {
		var orderID string
		var it Item
		if err := items.Scan(&orderID, &it.ProductID, &it.Quantity, &it.UnitPrice); err != nil {
			return err
		}
		o := &out[index[orderID]]
		o.Items = append(o.Items, it)
	}
	return items.Err()
}

// SetStatus changes the status only if it is still from.
func (s *SQLStore) SetStatus(ctx context.Context, id string, from, to Status, at time.Time, ev *event.Event) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error { return setStatus(ctx, tx, id, from, to, at, ev) })
	if errors.Is(err, ErrStatusChanged) {
		if _, getErr := s.Get(ctx, id); errors.Is(getErr, ErrNotFound) {
			return ErrNotFound
		}
	}
	return err
}

func setStatus(ctx context.Context, tx *sql.Tx, id string, from, to Status, at time.Time, ev *event.Event) error {
	res, err := tx.ExecContext(ctx, "UPDATE orders SET status = $1, update_time = $2, version = version + 1 WHERE id = $3 AND status = $4",
		int(to), at.UnixMicro(), id, int(from))
	if err := sqldb.AffectedOne(res, err, ErrStatusChanged); err != nil {
		return err
	}
	if ev != nil {
		return outbox.Add(ctx, tx, *ev)
	}
	return nil
}

// ListByStatus returns orders in status, oldest first.
func (s *SQLStore) ListByStatus(ctx context.Context, status Status, limit int) ([]Order, error) {
	return s.query(ctx, "SELECT "+orderColumns+" FROM orders WHERE status = $1 ORDER BY id LIMIT $2", int(status), limit)
}

// KnownUser returns the replica of a user.
func (s *SQLStore) KnownUser(ctx context.Context, id string) (KnownUser, error) {
	var u KnownUser
	var deleted int
	var version int64
	err := s.db.QueryRowContext(ctx, "SELECT id, email, name, deleted, version FROM known_users WHERE id = $1", id).
		Scan(&u.ID, &u.Email, &u.Name, &deleted, &version)
	if errors.Is(err, sql.ErrNoRows) {
		return KnownUser{}, ErrUnknownUser
	}
	u.Deleted, u.Version = deleted != 0, time.UnixMicro(version).UTC()
	return u, err
}

// ApplyUser applies one user event, once.
func (s *SQLStore) ApplyUser(ctx context.Context, consumer, eventID string, u KnownUser, cancelled func(Order) (event.Event, error)) ([]Order, error) {
	var cancelledOrders []Order
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO processed_events (consumer, event_id, processed_time) VALUES ($1, $2, $3)",
			consumer, eventID, time.Now().UnixMicro()); err != nil {
			if sqldb.IsUniqueViolation(err) {
				return ErrAlreadyApplied
			}
			return err
		}
		deleted := 0
		if u.Deleted {
			deleted = 1
		}
		// A tombstone wins over any later-arriving older event; otherwise
		// the newest version wins.
		if _, err := tx.ExecContext(ctx, `INSERT INTO known_users (id, email, name, deleted, version) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = excluded.name, deleted = excluded.deleted, version = excluded.version
			WHERE known_users.deleted = 0 AND (excluded.version >= known_users.version OR excluded.deleted = 1)`,
			u.ID, u.Email, u.Name, deleted, u.Version.UnixMicro()); err != nil {
			return err
		}
		if !u.Deleted {
			return nil
		}
		rows, err := tx.QueryContext(ctx, "SELECT "+orderColumns+" FROM orders WHERE user_id = $1 AND status IN ($2, $3) ORDER BY id",
			u.ID, int(StatusPending), int(StatusConfirmed))
		if err != nil {
			return err
		}
		open, err := scanOrders(rows)
		if err != nil {
			return err
		}
		for _, o := range open {
			ev, err := cancelled(o)
			if err != nil {
				return err
			}
			if err := setStatus(ctx, tx, o.ID, o.Status, StatusCancelled, ev.Time, &ev); err != nil {
				return err
			}
			o.Status, o.UpdateTime, o.Version = StatusCancelled, ev.Time, o.Version+1
			cancelledOrders = append(cancelledOrders, o)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return cancelledOrders, nil
}
