package sqldb_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/trellis-mesh/trellis/internal/sqldb"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

func TestUnreachable(t *testing.T) {
	t.Parallel()
	// A real refused connection, through database/sql and pgx.
	_, refused := sqldb.Open(context.Background(), sqldb.Config{Name: "x", URL: "postgres://postgres@127.0.0.1:1/test?connect_timeout=2"})
	if refused == nil {
		t.Fatal("opening a database on a closed port succeeded")
	}
	// A real constraint violation.
	db := testenv.OpenDB(t, sqldb.Postgres, "unreach")
	if _, err := db.Exec("CREATE TABLE u (k TEXT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO u VALUES ('a')"); err != nil {
		t.Fatal(err)
	}
	_, unique := db.Exec("INSERT INTO u VALUES ('a')")
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", refused, true},
		{"connection closed mid-transaction", fmt.Errorf("create order: %w", pgconn.ErrConnClosed), true},
		{"admin shutdown", &pgconn.PgError{Code: "57P01"}, true},
		{"connection failure class 08", &pgconn.PgError{Code: "08006"}, true},
		{"unique violation", unique, false},
		{"no rows", sql.ErrNoRows, false},
		{"plain error", errors.New("boom"), false},
		{"nil", nil, false},
	} {
		if got := sqldb.Unreachable(tt.err); got != tt.want {
			t.Errorf("%s: Unreachable(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

// TestConcurrentOpenCreatesSchemaOnce: replicas starting together on one
// PostgreSQL must all come up (CREATE SCHEMA IF NOT EXISTS races).
func TestConcurrentOpenCreatesSchemaOnce(t *testing.T) {
	t.Parallel()
	schema := "t_race_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			db, err := sqldb.Open(context.Background(), sqldb.Config{Name: "race", URL: testenv.PostgresURL(), Schema: schema})
			if err == nil {
				db.Close()
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent open: %v", err)
		}
	}
	if db, err := sqldb.Open(context.Background(), sqldb.Config{Name: "race", URL: testenv.PostgresURL(), Schema: schema}); err == nil {
		_, _ = db.Exec("DROP SCHEMA " + schema + " CASCADE")
		db.Close()
	}
}

// The pool keeps the connections it opened: with database/sql's default
// of 2 idle connections, every call beyond the second concurrent one
// closed its connection after use, and the next dialled (and prepared its
// statements) again — a PostgreSQL backend per call under load.
func TestPoolKeepsItsConnectionsUnderConcurrency(t *testing.T) {
	for _, d := range []sqldb.Dialect{sqldb.SQLite, sqldb.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			db := testenv.OpenDB(t, d, "pool")
			ctx := context.Background()
			for range 3 {
				var conns []*sql.Conn
				for range 6 { // six calls at once, each holding a connection
					c, err := db.Conn(ctx)
					if err != nil {
						t.Fatal(err)
					}
					conns = append(conns, c)
				}
				for _, c := range conns {
					c.Close()
				}
			}
			st := db.Stats()
			if st.MaxIdleClosed > 0 || st.OpenConnections != 6 {
				t.Fatalf("after three bursts of 6 concurrent calls: %d connections open, %d closed for being idle; want 6 kept", st.OpenConnections, st.MaxIdleClosed)
			}
		})
	}
}
