// Package apptest runs Trellis components in a test exactly as `trellis
// run` wires them, on loopback ports, and stops them at cleanup.
package apptest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/app"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

var (
	natsMu   sync.Mutex
	natsURLs = map[testing.TB]string{}
)

// NATSURL is the test's NATS server, shared by the components the test
// starts (they must see each other's events).
func NATSURL(t testing.TB) string {
	natsMu.Lock()
	defer natsMu.Unlock()
	if u, ok := natsURLs[t]; ok {
		return u
	}
	u, _ := testenv.NATS(t)
	natsURLs[t] = u
	t.Cleanup(func() {
		natsMu.Lock()
		delete(natsURLs, t)
		natsMu.Unlock()
	})
	return u
}

// Config returns the defaults of `trellis run` with every port free-picked,
// a temp data dir, a fast password hash and, unless target is all (which
// embeds its own), a NATS server shared by the test's components.
func Config(t testing.TB, target string) app.Config {
	nats := ""
	if target != app.TargetAll {
		nats = NATSURL(t)
	}
	c := app.Defaults()
	c.NATSURL, c.Target, c.DataDir = nats, target, t.TempDir()
	c.UserAddr, c.OrderAddr, c.AdminAddr, c.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	c.UpstreamTimeout, c.DrainTimeout = 2*time.Second, 5*time.Second
	c.BcryptCost = 4
	return c
}

// Running is a started App.
type Running struct {
	*app.App
	stop context.CancelFunc
	done chan error
}

// Start builds and runs cfg; it is stopped at cleanup if not before.
func Start(t testing.TB, cfg app.Config) *Running {
	t.Helper()
	a, err := app.New(context.Background(), cfg, testenv.Logger())
	if err != nil {
		t.Fatalf("start %s: %v", cfg.Target, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{App: a, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() { r.Stop(t) })
	return r
}

// Stop shuts the components down gracefully and waits for them.
func (r *Running) Stop(t testing.TB) {
	if r.stop == nil {
		return
	}
	r.stop()
	r.stop = nil
	if err := <-r.done; err != nil {
		t.Errorf("run: %v", err)
	}
}
