package order

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/sqldb"
)

// Store keeps orders.
type Store interface {
	// Create inserts o with its items; ErrRequestIDTaken if o.RequestID
	// is already used.
	Create(ctx context.Context, o Order) error
	Get(ctx context.Context, id string) (Order, error)
	GetByRequestID(ctx context.Context, requestID string) (Order, error)
	// ListByUser returns up to limit of the user's orders with id < before
	// ("" for the newest), newest first.
	ListByUser(ctx context.Context, userID, before string, limit int) ([]Order, error)
	// SetStatus moves order id from status from to status to; ErrNotFound
	// if there is no such order, ErrStatusChanged if its status is not from.
	SetStatus(ctx context.Context, id string, from, to Status, at time.Time) error
	Ping(ctx context.Context) error
}

//go:embed migrations
var migrations embed.FS

// SQLStore is the Store on SQLite or PostgreSQL.
type SQLStore struct{ db *sqldb.DB }

// NewSQLStore applies the order migrations to db and returns the store.
func NewSQLStore(ctx context.Context, db *sqldb.DB) (*SQLStore, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	if err := db.Migrate(ctx, sub); err != nil {
		return nil, fmt.Errorf("order store: migrate: %w", err)
	}
	return &SQLStore{db: db}, nil
}

const orderColumns = "id, user_id, status, currency, total_minor, request_id, request_hash, create_time, update_time"

// Create inserts the order and its items in one transaction.
func (s *SQLStore) Create(ctx context.Context, o Order) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO orders ("+orderColumns+") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
			o.ID, o.UserID, int(o.Status), o.Currency, o.Total, o.RequestID, o.RequestHash,
			o.CreateTime.UnixMicro(), o.UpdateTime.UnixMicro()); err != nil {
			return err
		}
		for i, it := range o.Items {
			if _, err := tx.ExecContext(ctx, "INSERT INTO order_items (order_id, line, product_id, quantity, unit_price_minor) VALUES ($1, $2, $3, $4, $5)",
				o.ID, i, it.ProductID, it.Quantity, it.UnitPrice); err != nil {
				return err
			}
		}
		return nil
	})
	if sqldb.IsUniqueViolation(err) {
		return ErrRequestIDTaken
	}
	return err
}

// Get returns the order with id.
func (s *SQLStore) Get(ctx context.Context, id string) (Order, error) {
	return s.getOne(ctx, "id", id)
}

// GetByRequestID returns the order created with requestID.
func (s *SQLStore) GetByRequestID(ctx context.Context, requestID string) (Order, error) {
	return s.getOne(ctx, "request_id", requestID)
}

func (s *SQLStore) getOne(ctx context.Context, column, value string) (Order, error) {
	os, err := s.query(ctx, "SELECT "+orderColumns+" FROM orders WHERE "+column+" = $1", value)
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
	defer rows.Close()
	var out []Order
	index := map[string]int{}
	for rows.Next() {
		var o Order
		var status int
		var created, updated int64
		if err := rows.Scan(&o.ID, &o.UserID, &status, &o.Currency, &o.Total, &o.RequestID, &o.RequestHash, &created, &updated); err != nil {
			return nil, err
		}
		o.Status = Status(status)
		o.CreateTime, o.UpdateTime = time.UnixMicro(created).UTC(), time.UnixMicro(updated).UTC()
		index[o.ID] = len(out)
		out = append(out, o)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	if len(out) == 0 {
		return out, nil
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
		return nil, err
	}
	defer items.Close()
	for items.Next() {
		var orderID string
		var it Item
		if err := items.Scan(&orderID, &it.ProductID, &it.Quantity, &it.UnitPrice); err != nil {
			return nil, err
		}
		o := &out[index[orderID]]
		o.Items = append(o.Items, it)
	}
	return out, items.Err()
}

// SetStatus changes the status only if it is still from.
func (s *SQLStore) SetStatus(ctx context.Context, id string, from, to Status, at time.Time) error {
	res, err := s.db.ExecContext(ctx, "UPDATE orders SET status = $1, update_time = $2 WHERE id = $3 AND status = $4",
		int(to), at.UnixMicro(), id, int(from))
	err = sqldb.AffectedOne(res, err, ErrStatusChanged)
	if errors.Is(err, ErrStatusChanged) {
		if _, getErr := s.Get(ctx, id); errors.Is(getErr, ErrNotFound) {
			return ErrNotFound
		}
	}
	return err
}

// Ping checks the database answers.
func (s *SQLStore) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }
