package user

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

// Store keeps users. Implementations must make emails unique
// case-insensitively (ErrEmailTaken) and return ErrNotFound for unknown ids.
// Every change is stored with its event, atomically: both or neither.
type Store interface {
	Create(ctx context.Context, u User, ev event.Event) error
	Get(ctx context.Context, id string) (User, error)
	// GetMany returns the users that exist among ids, in any order.
	GetMany(ctx context.Context, ids []string) ([]User, error)
	// List returns up to limit users with id > after, ordered by id.
	List(ctx context.Context, after string, limit int) ([]User, error)
	// Update writes the fields patch names (and nothing else), bumps the
	// version and sets the update time, in one statement, only if the
	// version is still ifVersion (0: any), and stores event(the user after
	// the change) with it. ErrStale if the version moved on.
	Update(ctx context.Context, id string, patch Patch, ifVersion int64, at time.Time, eventOf func(User) (event.Event, error)) (User, error)
	// Delete removes the user if its version is still ifVersion (0: any).
	Delete(ctx context.Context, id string, ifVersion int64, ev event.Event) error
	Ping(ctx context.Context) error
	AuthStore
}

//go:embed migrations
var migrations embed.FS

// SQLStore is the Store on SQLite or PostgreSQL, with the outbox in the
// same database.
type SQLStore struct {
	*outbox.Base
	db *sqldb.DB
}

// NewSQLStore applies the user and outbox migrations to db and returns the
// store.
func NewSQLStore(ctx context.Context, db *sqldb.DB) (*SQLStore, error) {
	base, err := outbox.NewBase(ctx, db, "user", migrations, "migrations")
	if err != nil {
		return nil, err
	}
	return &SQLStore{Base: base, db: db}, nil
}

const userColumns = "id, email, name, password_hash, create_time, update_time, version, roles"

func emailKey(email string) string { return strings.ToLower(email) }

// Create inserts u and its event.
func (s *SQLStore) Create(ctx context.Context, u User, ev event.Event) error {
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO users (id, email, email_key, name, password_hash, create_time, update_time)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			u.ID, u.Email, emailKey(u.Email), u.Name, u.PasswordHash, u.CreateTime.UnixMicro(), u.UpdateTime.UnixMicro()); err != nil {
			return err
		}
		return outbox.Add(ctx, tx, ev)
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
	var roles string
	if err := row.Scan(&u.ID, &u.Email, &u.Name, &u.PasswordHash, &created, &updated, &u.Version, &roles); err != nil {
		return User{}, err
	}
	if roles != "" {
		u.Roles = strings.Split(roles, ",")
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

// Update writes the masked fields of the user, conditionally, with its
// event. Only the named columns are written, in one UPDATE, so two
// concurrent updates of different fields both stick (no read-modify-write
// of the whole row).
func (s *SQLStore) Update(ctx context.Context, id string, patch Patch, ifVersion int64, at time.Time, eventOf func(User) (event.Event, error)) (User, error) {
	args := []any{at.UnixMicro()}
	sets := "version = version + 1, update_time = $1"
	if patch.Email != nil {
		args = append(args, *patch.Email, emailKey(*patch.Email))
		sets += fmt.Sprintf(", email = $%d, email_key = $%d", len(args)-1, len(args))
	}
	if patch.Name != nil {
		args = append(args, *patch.Name)
		sets += fmt.Sprintf(", name = $%d", len(args))
	}
	args = append(args, id)
	where := fmt.Sprintf("id = $%d", len(args))
	if ifVersion != 0 {
		args = append(args, ifVersion)
		where += fmt.Sprintf(" AND version = $%d", len(args))
	}
	var u User
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE users SET "+sets+" WHERE "+where, args...)
		if err := sqldb.AffectedOne(res, err, ErrNotFound); err != nil {
			return s.staleOrMissing(ctx, tx, id, err)
		}
		if u, err = scanUser(tx.QueryRowContext(ctx, "SELECT "+userColumns+" FROM users WHERE id = $1", id)); err != nil {
			return err
		}
		ev, err := eventOf(u)
		if err != nil {
			return err
		}
		return outbox.Add(ctx, tx, ev)
	})
	if sqldb.IsUniqueViolation(err) {
		return User{}, ErrEmailTaken
	}
	return u, err
}

// staleOrMissing tells, after a conditional write matched no row, whether
// the user is gone (ErrNotFound) or has another version (ErrStale).
func (s *SQLStore) staleOrMissing(ctx context.Context, tx *sql.Tx, id string, err error) error {
	if !errors.Is(err, ErrNotFound) {
		return err
	}
	var one int
	switch err := tx.QueryRowContext(ctx, "SELECT 1 FROM users WHERE id = $1", id).Scan(&one); {
	case errors.Is(err, sql.ErrNoRows):
		return ErrNotFound
	case err != nil:
		return err
	}
	return ErrStale
}

// Delete removes the user with id, conditionally, with its event.
func (s *SQLStore) Delete(ctx context.Context, id string, ifVersion int64, ev event.Event) error {
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		q, args := "DELETE FROM users WHERE id = $1", []any{id}
		if ifVersion != 0 {
			q, args = q+" AND version = $2", append(args, ifVersion)
		}
		res, err := tx.ExecContext(ctx, q, args...)
		if err := sqldb.AffectedOne(res, err, ErrNotFound); err != nil {
			return s.staleOrMissing(ctx, tx, id, err)
		}
		// A deleted user's sign-ins end with it.
		if _, err := tx.ExecContext(ctx, "DELETE FROM refresh_tokens WHERE user_id = $1", id); err != nil {
			return err
		}
		return outbox.Add(ctx, tx, ev)
	})
}
