// Package sqldb opens the database a service stores its state in — SQLite
// in the data directory by default, PostgreSQL when a URL is given — and
// applies the service's embedded migrations. Both backends speak the same
// SQL in the stores ($1 placeholders, integer timestamps); only migrations
// and error codes differ, and they are handled here.
package sqldb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Dialect names a backend.
type Dialect string

// The supported backends; also the names of the migration folders.
const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

// Config says where a service's data lives.
type Config struct {
	// URL of a PostgreSQL database (postgres://...). Empty means SQLite.
	URL string
	// DataDir holds the SQLite file <Name>.db when URL is empty.
	DataDir string
	// Name of the service; it names the SQLite file and, with PostgreSQL,
	// the schema (trellis_<Name>) unless Schema is set.
	Name string
	// Schema overrides the PostgreSQL schema (tests use one per test).
	Schema string
}

// DB is an open database of one service.
type DB struct {
	*sql.DB
	Dialect Dialect
	// Where is a log-safe description: a file path or host/db/schema,
	// never a password.
	Where string

	stmts sync.Map // query text -> *sql.Stmt
}

// stmt returns the prepared statement of query, preparing it once. Parsing
// SQL on every call was the largest single cost of a SQLite read (~15% of
// a GetUser's CPU); database/sql re-prepares it per pooled connection as
// needed.
func (db *DB) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	if s, ok := db.stmts.Load(query); ok {
		return s.(*sql.Stmt), nil
	}
	s, err := db.DB.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if prev, loaded := db.stmts.LoadOrStore(query, s); loaded {
		s.Close()
		return prev.(*sql.Stmt), nil
	}
	return s, nil
}

// QueryContext runs a cached prepared statement.
func (db *DB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	s, err := db.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return s.QueryContext(ctx, args...)
}

// QueryRowContext runs a cached prepared statement. A failure to prepare
// surfaces from Scan, as with sql.DB.
func (db *DB) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	s, err := db.stmt(ctx, query)
	if err != nil {
		return db.DB.QueryRowContext(ctx, query, args...)
	}
	return s.QueryRowContext(ctx, args...)
}

// ExecContext runs a cached prepared statement.
func (db *DB) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	s, err := db.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return s.ExecContext(ctx, args...)
}

// Close closes the cached statements and the database.
func (db *DB) Close() error {
	db.stmts.Range(func(_, s any) bool {
		s.(*sql.Stmt).Close()
		return true
	})
	return db.DB.Close()
}

// Open opens (creating if needed) the service's database.
func Open(ctx context.Context, cfg Config) (*DB, error) {
	if cfg.Name == "" {
		return nil, errors.New("sqldb: config needs a service name")
	}
	var db *DB
	var err error
	if cfg.URL == "" {
		db, err = openSQLite(cfg)
	} else {
		db, err = openPostgres(cfg)
	}
	if err != nil {
		return nil, err
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqldb: reach %s: %w", db.Where, err)
	}
	return db, nil
}

func openSQLite(cfg Config) (*DB, error) {
	dir := cfg.DataDir
	if dir == "" {
		dir = "."
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("sqldb: data dir: %w", err)
	}
	path := filepath.Join(dir, cfg.Name+".db")
	// WAL lets readers run beside the writer; busy_timeout waits for the
	// write lock instead of failing; _txlock=immediate takes the write lock
	// at BEGIN so two writers never deadlock upgrading a read lock.
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)" +
		"&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	sdb, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqldb: open %s: %w", path, err)
	}
	sdb.SetMaxOpenConns(8)
	sdb.SetMaxIdleConns(8) // see openPostgres
	return &DB{DB: sdb, Dialect: SQLite, Where: path}, nil
}

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

func openPostgres(cfg Config) (*DB, error) {
	pc, err := pgx.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("sqldb: database url: %w", err)
	}
	schema := cfg.Schema
	if schema == "" {
		schema = "trellis_" + cfg.Name
	}
	if !schemaName.MatchString(schema) {
		return nil, fmt.Errorf("sqldb: schema %q: want lower-case letters, digits and _", schema)
	}
	// Every connection resolves unqualified names in the service's schema,
	// so the stores' SQL never names it.
	pc.RuntimeParams["search_path"] = schema
	sdb := stdlib.OpenDB(*pc)
	sdb.SetMaxOpenConns(20)
	// Keep every connection the pool opened: database/sql keeps only 2
	// idle by default, so under more concurrency each call past the second
	// closed its connection and the next one dialled a new one (a new
	// PostgreSQL backend, a new SQLite handle and its pragmas) and prepared
	// its statements again. Found by the load harness: the split system's
	// CreateOrder p99 went past 50 ms at 200/s.
	sdb.SetMaxIdleConns(20)
	sdb.SetConnMaxIdleTime(5 * time.Minute)
	where := fmt.Sprintf("postgres %s:%d/%s schema %s", pc.Host, pc.Port, pc.Database, schema)
	db := &DB{DB: sdb, Dialect: Postgres, Where: where}
	// Replicas starting together race here: IF NOT EXISTS does not stop
	// two concurrent creations, the loser gets a unique violation on the
	// catalog. The schema exists either way.
	if _, err := sdb.Exec("CREATE SCHEMA IF NOT EXISTS " + schema); err != nil && !IsUniqueViolation(err) {
		sdb.Close()
		return nil, fmt.Errorf("sqldb: create schema on %s: %w", where, err)
	}
	return db, nil
}

// Migrate applies, in version order and once each, the migrations of fsys
// the database has not seen yet. Files are named NNNN_name.sql: those at the
// root are portable SQL for both backends; a file of the same version under
// sqlite/ or postgres/ replaces the root one for that backend. Concurrent
// replicas starting together are serialised by a lock. set names the
// migration sequence ("user", "outbox"): several live in one database.
func (db *DB) Migrate(ctx context.Context, set string, fsys fs.FS) error {
	files, err := migrationFiles(fsys, db.Dialect)
	if err != nil {
		return err
	}
	return db.InTx(ctx, func(tx *sql.Tx) error {
		if db.Dialect == Postgres {
			if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(hashtext(current_schema()))"); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			set_name TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, applied_at BIGINT NOT NULL,
			PRIMARY KEY (set_name, version))`); err != nil {
			return err
		}
		for _, f := range files {
			base := filepath.Base(f)
			version, _ := migrationVersion(base)
			var seen int
			if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM schema_migrations WHERE set_name = $1 AND version = $2", set, version).Scan(&seen); err != nil {
				return err
			}
			if seen > 0 {
				continue
			}
			body, err := fs.ReadFile(fsys, f)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, string(body)); err != nil {
				return fmt.Errorf("sqldb: migration %s: %w", f, err)
			}
			if _, err := tx.ExecContext(ctx, "INSERT INTO schema_migrations (set_name, version, name, applied_at) VALUES ($1, $2, $3, $4)",
				set, version, base, time.Now().Unix()); err != nil {
				return err
			}
		}
		return nil
	})
}

func migrationVersion(base string) (int, error) {
	num, _, ok := strings.Cut(base, "_")
	v, err := strconv.Atoi(num)
	if !ok || err != nil {
		return 0, fmt.Errorf("sqldb: migration %s: name must be NNNN_name.sql", base)
	}
	return v, nil
}

func migrationFiles(fsys fs.FS, d Dialect) ([]string, error) {
	byVersion := map[int]string{}
	for _, pattern := range []string{"*.sql", string(d) + "/*.sql"} { // dialect files win
		files, err := fs.Glob(fsys, pattern)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			v, err := migrationVersion(filepath.Base(f))
			if err != nil {
				return nil, err
			}
			byVersion[v] = f
		}
	}
	versions := make([]int, 0, len(byVersion))
	for v := range byVersion {
		versions = append(versions, v)
	}
	sort.Ints(versions)
	files := make([]string, len(versions))
	for i, v := range versions {
		files[i] = byVersion[v]
	}
	return files, nil
}

// InTx runs fn in a transaction, committing if it returns nil.
func (db *DB) InTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// IsUniqueViolation reports whether err is a unique or primary key conflict.
func IsUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23505"
	}
	var sqErr *sqlite.Error
	if errors.As(err, &sqErr) {
		c := sqErr.Code()
		return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// AffectedOne turns the result of an UPDATE or DELETE by key into an error:
// err itself, or notFound when no row matched.
func AffectedOne(res sql.Result, err error, notFound error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return notFound
	}
	return nil
}

// Unreachable reports whether err means the database could not be reached
// or the connection was lost (as opposed to a bad query or a constraint):
// the request may succeed when retried. The mesh server answers such
// errors UNAVAILABLE.
func Unreachable(err error) bool {
	var connectErr *pgconn.ConnectError
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		return false
	case errors.Is(err, driver.ErrBadConn), errors.As(err, &connectErr), errors.Is(err, pgconn.ErrConnClosed), pgconn.SafeToRetry(err):
		return true
	case errors.As(err, &pgErr):
		// Class 08: connection exception; 57P01-03: shutting down, cannot
		// connect now.
		return strings.HasPrefix(pgErr.Code, "08") || pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03"
	}
	return false
}
