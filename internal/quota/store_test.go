package quota_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/quota"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestStoreFailuresCountsEachLogsFewRedacted: every failure is counted;
// a burst of them is one log line, with no password in it; a second
// limit's counter on the same registry is its own, and the same name
// twice is an error, not a panic.
func TestStoreFailuresCountsEachLogsFewRedacted(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	failed, err := quota.StoreFailures(reg, slog.New(slog.NewTextHandler(&logs, nil)), "test_store_errors_total", "help", "store unavailable")
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		failed(errors.New("dial redis://:s3cret@10.0.0.5:6379: i/o timeout"))
	}
	want := "# HELP test_store_errors_total help\n# TYPE test_store_errors_total counter\ntest_store_errors_total 100\n"
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "test_store_errors_total"); err != nil {
		t.Error(err)
	}
	if lines := strings.Count(logs.String(), "store unavailable"); lines != 1 {
		t.Errorf("%d log lines for a burst, want 1:\n%s", lines, logs.String())
	}
	if strings.Contains(logs.String(), "s3cret") {
		t.Errorf("the log holds the password: %s", logs.String())
	}
	if _, err := quota.StoreFailures(reg, slog.Default(), "test_store_errors_total", "help", "again"); err == nil {
		t.Error("a second counter of the same name was registered")
	}
}
