// Package outbox is the transactional outbox of a service store: Add
// writes an event in the transaction of the change it describes, so it is
// published if and only if the change commits; Table is what the
// eventbus relay reads, marks sent and prunes; Base is what every service
// store embeds (its database, its migrations and its outbox).
package outbox

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/event"
	"github.com/trellis-mesh/trellis/internal/sqldb"
)

//go:embed migrations
var migrations embed.FS

// Table is a service's outbox table; it implements eventbus.Outbox for
// the relay.
type Table struct{ db *sqldb.DB }

// New creates the outbox tables in db if needed (the migration set
// "outbox").
func New(ctx context.Context, db *sqldb.DB) (*Table, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	if err := db.Migrate(ctx, "outbox", sub); err != nil {
		return nil, fmt.Errorf("outbox: migrate: %w", err)
	}
	return &Table{db: db}, nil
}

// Add writes ev in tx: it is published if and only if tx commits.
func Add(ctx context.Context, tx *sql.Tx, ev event.Event) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO outbox (id, aggregate_id, subject, type, source, payload, traceparent, create_time)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		ev.ID, ev.AggregateID, ev.Subject, ev.Type, ev.Source, ev.Payload, ev.TraceParent, ev.Time.UnixMicro())
	if err != nil {
		return fmt.Errorf("outbox: add %s: %w", ev.Subject, err)
	}
	return nil
}

// Pending returns up to limit unsent events in commit order.
func (o *Table) Pending(ctx context.Context, limit int) ([]event.Event, error) {
	rows, err := o.db.QueryContext(ctx, `SELECT id, aggregate_id, subject, type, source, payload, traceparent, create_time
		FROM outbox WHERE sent_time IS NULL ORDER BY seq LIMIT $1`, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []event.Event
	for rows.Next() {
		var ev event.Event
		var created int64
		if err := rows.Scan(&ev.ID, &ev.AggregateID, &ev.Subject, &ev.Type, &ev.Source, &ev.Payload, &ev.TraceParent, &created); err != nil {
			return nil, err
		}
		ev.Time = time.UnixMicro(created).UTC()
		out = append(out, ev)
	}
	return out, rows.Err()
}

// MarkSent records the acknowledged events.
func (o *Table) MarkSent(ctx context.Context, ids []string, at time.Time) error {
	if len(ids) == 0 {
		return nil
	}
	ph := make([]string, len(ids))
	args := make([]any, 0, len(ids)+1)
	args = append(args, at.UnixMicro())
	for i, id := range ids {
		ph[i] = fmt.Sprintf("$%d", i+2)
		args = append(args, id)
	}
	_, err := o.db.DB.ExecContext(ctx, "UPDATE outbox SET sent_time = $1 WHERE id IN ("+strings.Join(ph, ", ")+")", args...)
	return err
}

// CountPending returns the number of unsent events.
func (o *Table) CountPending(ctx context.Context) (int64, error) {
	var n int64
	err := o.db.QueryRowContext(ctx, "SELECT count(*) FROM outbox WHERE sent_time IS NULL").Scan(&n)
	return n, err
}

// Prune deletes events sent before sentBefore.
func (o *Table) Prune(ctx context.Context, sentBefore time.Time) (int64, error) {
	res, err := o.db.ExecContext(ctx, "DELETE FROM outbox WHERE sent_time IS NOT NULL AND sent_time < $1", sentBefore.UnixMicro())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// AcquireLease takes or renews the relay lease: one upsert that succeeds
// only for the current holder or once the previous lease expired.
func (o *Table) AcquireLease(ctx context.Context, holder string, ttl time.Duration, now time.Time) (bool, error) {
	res, err := o.db.ExecContext(ctx, `INSERT INTO outbox_lease (name, holder, expires) VALUES ('relay', $1, $2)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
		WHERE outbox_lease.holder = excluded.holder OR outbox_lease.expires < $3`,
		holder, now.Add(ttl).UnixMicro(), now.UnixMicro())
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// Base is what every service store shares: its database and its outbox.
// Service stores embed it.
type Base struct {
	db     *sqldb.DB
	outbox *Table
}

// NewBase applies a service's migrations (the folder dir of fsys, as the
// migration set named service) and the outbox's to db.
func NewBase(ctx context.Context, db *sqldb.DB, service string, fsys fs.FS, dir string) (*Base, error) {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		return nil, err
	}
	if err := db.Migrate(ctx, service, sub); err != nil {
		return nil, fmt.Errorf("%s store: migrate: %w", service, err)
	}
	outbox, err := New(ctx, db)
	if err != nil {
		return nil, err
	}
	return &Base{db: db, outbox: outbox}, nil
}

// Outbox is the store's outbox, for the relay.
func (b *Base) Outbox() *Table { return b.outbox }

// Ping checks the database answers.
func (b *Base) Ping(ctx context.Context) error { return b.db.PingContext(ctx) }
