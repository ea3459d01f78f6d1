package app_test

import (
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/app"
)

// TestValidate: each component validates its own settings and the process
// checks what the modules need from each other; the defaults are valid.
func TestValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		edit func(*app.Config)
		want string // "" means valid
	}{
		{"defaults", func(*app.Config) {}, ""},
		{"order alone needs the user service's address", func(c *app.Config) { c.Target, c.NATSURL = "order", "nats://x" }, "target order without user needs --user-upstream"},
		{"gateway alone needs both", func(c *app.Config) { c.Target = "gateway" }, "target gateway without order needs --order-upstream"},
		{"gateway with its upstreams", func(c *app.Config) { c.Target, c.UserUpstream, c.OrderUpstream = "gateway", "u:1", "o:2" }, ""},
		{"separate user and order share a NATS", func(c *app.Config) { c.Target, c.UserUpstream = "order", "u:1" }, "need a shared NATS"},
		{"unknown target", func(c *app.Config) { c.Target = "user,nope" }, `unknown target "nope"`},
		{"bcrypt cost (user)", func(c *app.Config) { c.User.BcryptCost = 3 }, "--bcrypt-cost"},
		{"reconcile interval (order)", func(c *app.Config) { c.Order.ReconcileInterval = 0 }, "--reconcile-interval"},
		{"replicas (events)", func(c *app.Config) { c.Events.Replicas = 6 }, "--nats-replicas"},
		{"retention (outbox)", func(c *app.Config) { c.Outbox.Retention = -1 }, "--outbox-retention"},
		{"deadline (server)", func(c *app.Config) { c.Server.MaxDeadline = 0 }, "--max-deadline"},
		{"breaker (upstream)", func(c *app.Config) { c.Upstream.Breaker.Timeout = 0 }, "--breaker-timeout"},
		{"outlier ejection (upstream)", func(c *app.Config) { c.Upstream.Outlier.FailurePercent = 101 }, "--outlier-failure-percent"},
		{"embedded NATS sync", func(c *app.Config) { c.NATSSync = "sometimes" }, "--nats-sync"},
		{"embedded NATS sync interval", func(c *app.Config) { c.NATSSync = "-1s" }, "--nats-sync"},
		{"origin (gateway)", func(c *app.Config) { c.Gateway.CORSOrigins = []string{"https://app.example.com/path"} }, "--cors-origins"},
		{"identity source (identity)", func(c *app.Config) { c.Identity.Source = "magic" }, "--identity-source"},
		{"one identity per process", func(c *app.Config) {
			c.Identity.Source, c.Identity.Cert, c.Identity.Key, c.Identity.Bundle = "files", "c", "k", "b"
		}, "run one target per process"},
		{"insecure skips identity checks", func(c *app.Config) { c.Identity.Insecure, c.Identity.Source = true, "magic" }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := app.Defaults()
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v, want valid", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestTargetsRunInDependencyOrder: whatever order targets are named in,
// modules are built after what they need.
func TestTargetsRunInDependencyOrder(t *testing.T) {
	t.Parallel()
	c := app.Defaults()
	c.Target = "gateway, order,user"
	got, err := app.TargetNames(c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "user,order,gateway" {
		t.Fatalf("targets %v, want user,order,gateway", got)
	}
}
