// Package etag makes and reads the AIP-154 etags of Trellis resources: a
// version counter the store bumps on every change, shown to clients as an
// opaque string, and the condition a conditional change is checked with.
package etag

import (
	"strconv"
	"strings"

	"github.com/trellis-mesh/trellis/internal/apperr"
)

// Of is the etag of a version: opaque to clients, "v" and the number.
func Of(version int64) string { return "v" + strconv.FormatInt(version, 10) }

// Parse returns the version an etag names; ok is false for anything Of did
// not make (which therefore matches no version). Quotes and a W/ prefix,
// as HTTP clients send them in If-Match, are accepted.
func Parse(s string) (version int64, ok bool) {
	s = strings.Trim(strings.TrimPrefix(s, "W/"), `"`)
	if !strings.HasPrefix(s, "v") {
		return 0, false
	}
	n, err := strconv.ParseInt(s[1:], 10, 64)
	if err != nil || n < 1 {
		return 0, false
	}
	return n, true
}

// Condition turns a request's etag into the version a change is
// conditional on (0: unconditional, for an empty etag). An etag that is
// not one of ours is ABORTED at once: it cannot match.
func Condition(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	v, ok := Parse(s)
	if !ok {
		return 0, apperr.Aborted("the etag does not match: send the etag of a read")
	}
	return v, nil
}
