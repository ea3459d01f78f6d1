package app

import (
	"context"
	"flag"

	"github.com/trellis-mesh/trellis/internal/sqldb"
	"github.com/trellis-mesh/trellis/services/user"
)

// GrantAdminConfig says whose account becomes an admin, in which database.
type GrantAdminConfig struct {
	Email       string
	DataDir     string
	DatabaseURL string
}

// RegisterFlags defines email, data-dir and database-url.
func (c *GrantAdminConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Email, "email", "", "email of the account that becomes an admin (it must exist: sign up first)")
	fs.StringVar(&c.DataDir, "data-dir", "./data", "directory of the SQLite databases (when --database-url is empty)")
	fs.StringVar(&c.DatabaseURL, "database-url", "", "the user service's PostgreSQL URL; empty: SQLite in --data-dir")
}

// GrantAdmin gives an existing account the admin role, writing the user
// service's database directly: making an admin needs access to the
// database, never an API call. Tokens issued afterwards (sign in again, or
// refresh) carry the role.
func GrantAdmin(ctx context.Context, c GrantAdminConfig) error {
	db, err := sqldb.Open(ctx, sqldb.Config{URL: c.DatabaseURL, DataDir: c.DataDir, Name: "user"})
	if err != nil {
		return err
	}
	defer db.Close()
	store, err := user.NewSQLStore(ctx, db)
	if err != nil {
		return err
	}
	_, err = user.NewService(store, user.Config{}).GrantAdmin(ctx, c.Email)
	return err
}
