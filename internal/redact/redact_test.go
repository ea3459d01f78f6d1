package redact_test

import (
	"strings"
	"testing"
	"testing/quick"

	"github.com/trellis-mesh/trellis/internal/redact"
)

func TestSecretsAreRedacted(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		"--database-url=postgres://trellis:s3cr3t@db:5432/trellis?sslmode=disable",
		"postgres://trellis:s3cr3t@db/trellis",
		"nats://order:s3cr3t@nats:4222",
		"redis://:s3cr3t@redis:6379/0",
		"host=db user=trellis password=s3cr3t dbname=trellis",
		"postgres://db/trellis?user=u&password=s3cr3t",
		"connect to nats://a:s3cr3t@h:4222: connection refused",
		"postgres://u:ab\fs3cr3t@db/x", // a form feed inside the password
		"postgres://u:s3cr3t\v@db/x",
	} {
		if got := redact.String(in); strings.Contains(got, "s3cr3t") {
			t.Errorf("String(%q) = %q", in, got)
		}
		if got := redact.URL(in); strings.Contains(got, "s3cr3t") {
			t.Errorf("URL(%q) = %q", in, got)
		}
	}
	if got := redact.Args([]string{"trellis", "run", "--database-url", "postgres://u:s3cr3t@h/db"}); strings.Contains(strings.Join(got, " "), "s3cr3t") || got[1] != "run" {
		t.Errorf("Args = %q", got)
	}
	if got := redact.URL("postgres://u@h/db"); got != "postgres://u@h/db" {
		t.Errorf("a URL without a password changed: %q", got)
	}
}

// TestNoPasswordSurvives is a property: whatever password (without the
// separators a URL would escape), a URL built with it is printed without it.
func TestNoPasswordSurvives(t *testing.T) {
	t.Parallel()
	f := func(pw string) bool {
		if len(pw) < 4 || strings.ContainsAny(pw, "@/ \t\n\r?#%") || strings.Contains("postgres://user:xxxxx@db:5432/x", pw) {
			return true
		}
		s := redact.String("postgres://user:" + pw + "@db:5432/x")
		return !strings.Contains(s, pw)
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 20000}); err != nil {
		t.Error(err)
	}
}
