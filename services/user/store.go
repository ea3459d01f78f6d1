package user

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/sqldb"
	"github.com/trellis-mesh/trellis/mesh/eventbus"
)

// Store keeps users. Implementations must make emails unique
// case-insensitively (ErrEmailTaken) and return ErrNotFound for unknown ids.
// Every change is stored with its event, atomically: both or neither.
type Store interface {
	Create(ctx context.Context, u User, ev eventbus.Event) error
	Get(ctx context.Context, id string) (User, error)
	// GetMany returns the users that exist among ids, in any order.
	GetMany(ctx context.Context, ids []string) ([]User, error)
	// List returns up to limit users with id > after, ordered by id.
	List(ctx context.Context, after string, limit int) ([]User, error)
	Update(ctx context.Context, u User, ev eventbus.Event) error
	Delete(ctx context.Context, id string, ev eventbus.Event) error
	Ping(ctx context.Context) error
}

//go:embed migrations
var migrations embed.FS

// SQLStore is the Store on SQLite or PostgreSQL, with the outbox in the
// same database.
type SQLStore struct {
	*sqldb.Base
	db *sqldb.DB
}

// NewSQLStore applies the user and outbox migrations to db and returns the
// store.
func NewSQLStore(ctx context.Context, db *sqldb.DB) (*SQLStore, error) {
	base, err := sqldb.NewBase(ctx, db, "user", migrations, "migrations")
	if err != nil {
		return nil, err
	}
	return &SQLStore{Base: base, db: db}, nil
}

const userColumns = "id, email, name, password_hash, create_time, update_time"

func emailKey(email string) string { return strings.ToLower(email) }

// Create inserts u and its event.
func (s *SQLStore) Create(ctx context.Context, u User, ev eventbus.Event) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO users (id, email, email_key, name, password_hash, create_time, update_time)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			u.ID, u.Email, emailKey(u.Email), u.Name, u.PasswordHash, u.CreateTime.UnixMicro(), u.UpdateTime.UnixMicro()); err != nil {
			return err
		}
		return sqldb.Add(ctx, tx, ev)
	})
	if sqldb.IsUniqueViolation(err) {
		return ErrEmailTaken
	}
	return err
}

type scanner interface{ Scan(dest ...any) error }

func scanUser(row scanner) (User, error) {
	var u User
	var created, updated int64
	if err := row.Scan(&u.ID, &u.Email, &u.Name, &u.PasswordHash, &created, &updated); err != nil {
		return User{}, err
	}
	u.CreateTime, u.UpdateTime = time.UnixMicro(created).UTC(), time.UnixMicro(updated).UTC()
	return u, nil
}

// Get returns the user with id.
func (s *SQLStore) Get(ctx context.Context, id string) (User, error) {
	u, err := scanUser(s.db.QueryRowContext(ctx, "SELECT "+userColumns+" FROM users WHERE id = $1", id))
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, ErrNotFound
	}
	return u, err
}

// GetMany returns the existing users among ids.
func (s *SQLStore) GetMany(ctx context.Context, ids []string) ([]User, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	ph := make([]string, len(ids))
	args := make([]any, len(ids))
	for i, id := range ids {
		ph[i] = fmt.Sprintf("$%d", i+1)
		args[i] = id
	}
	return s.query(ctx, "SELECT "+userColumns+" FROM users WHERE id IN ("+strings.Join(ph, ", ")+")", args...)
}

// List returns a page of users after the given id.
func (s *SQLStore) List(ctx context.Context, after string, limit int) ([]User, error) {
	return s.query(ctx, "SELECT "+userColumns+" FROM users WHERE id > $1 ORDER BY id LIMIT $2", after, limit)
}

func (s *SQLStore) query(ctx context.Context, q string, args ...any) ([]User, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// Update overwrites email, name and update time of u.ID, with its event.
func (s *SQLStore) Update(ctx context.Context, u User, ev eventbus.Event) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE users SET email = $1, email_key = $2, name = $3, update_time = $4 WHERE id = $5",
			u.Email, emailKey(u.Email), u.Name, u.UpdateTime.UnixMicro(), u.ID)
		if err := sqldb.AffectedOne(res, err, ErrNotFound); err != nil {
			return err
		}
		return sqldb.Add(ctx, tx, ev)
	})
	if sqldb.IsUniqueViolation(err) {
		return ErrEmailTaken
	}
	return err
}

// Delete removes the user with id, with its event.
func (s *SQLStore) Delete(ctx context.Context, id string, ev eventbus.Event) error {
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM users WHERE id = $1", id)
		if err := sqldb.AffectedOne(res, err, ErrNotFound); err != nil {
			return err
		}
		return sqldb.Add(ctx, tx, ev)
	})
}
