package main

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// A memory limit that cannot be read (this machine: cgroup v1 listed but
// not mounted) is logged once at INFO, never ERROR; a limit that can is
// applied at 90 % and said.
func TestMemoryLimitUnreadableIsNotAnError(t *testing.T) {
	for _, k := range []string{"GOMEMLIMIT", "AUTOMEMLIMIT"} { // Set reads their presence
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })

	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	setMemoryLimit(log, memlimit.WithProvider(func() (uint64, error) {
		return 0, errors.New("memory controller found in /proc/self/cgroup but no cgroup v1 memory mount found")
	}))
	if out := buf.String(); strings.Contains(out, `"level":"ERROR"`) || !strings.Contains(out, `"level":"INFO"`) {
		t.Fatalf("an unreadable limit: want one INFO line, got %q", out)
	}
	if got := debug.SetMemoryLimit(-1); got != prev {
		t.Fatalf("GOMEMLIMIT changed to %d on an unreadable limit", got)
	}

	buf.Reset()
	setMemoryLimit(log, memlimit.WithProvider(memlimit.Limit(1000<<20)))
	if got := debug.SetMemoryLimit(-1); got != 900<<20 {
		t.Fatalf("GOMEMLIMIT %d, want 90%% of 1000 MiB", got)
	}
	if out := buf.String(); strings.Contains(out, `"level":"ERROR"`) || !strings.Contains(out, `"bytes":943718400`) {
		t.Fatalf("a readable limit: got %q", out)
	}
}
