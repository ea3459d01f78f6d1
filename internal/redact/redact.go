// Package redact hides secrets in what Trellis prints or serves: URLs with
// passwords (postgres://u:secret@db, nats://u:secret@nats,
// redis://:secret@redis) and key=value connection strings (password=...).
package redact

import (
	"net/url"
	"regexp"
	"strings"
)

// urlWithUserinfo finds scheme://user:password@ in any text. Only space,
// tab and line breaks end the password; other control characters (a form
// feed, a vertical tab) are part of it and redacted with it — a property
// test found \f ending the match early and leaving the rest in the clear.
var urlWithUserinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)([^/@ \t\n\r:]*):([^@ \t\n\r]*)@`)

// keyValueSecret finds password=..., pass=... and token=... in key=value
// strings (libpq DSNs, query parameters).
var keyValueSecret = regexp.MustCompile(`(?i)((?:password|passwd|pass|pwd|token|secret|sslpassword)=)([^\s&]+)`)

// String returns s with every password in a URL or key=value pair
// replaced by "xxxxx".
func String(s string) string {
	if !strings.Contains(s, "@") && !strings.Contains(s, "=") {
		return s
	}
	s = urlWithUserinfo.ReplaceAllString(s, "${1}${2}:xxxxx@")
	return keyValueSecret.ReplaceAllString(s, "${1}xxxxx")
}

// URL returns a URL for logs and errors: its password replaced.
func URL(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if _, has := u.User.Password(); has {
			return u.Redacted()
		}
	}
	return String(raw)
}

// Args returns a command line with every secret redacted, e.g. for
// /debug/pprof/cmdline.
func Args(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = String(a)
	}
	return out
}
