// Package pagetoken makes the opaque page tokens of list RPCs. A token holds
// the last key of the previous page (keyset pagination: stable under
// concurrent inserts, no OFFSET scans) and a fingerprint of the query it
// belongs to, so a token from one listing is rejected by another.
package pagetoken

import (
	"encoding/base64"
	"encoding/json"
	"errors"
)

// ErrInvalid is returned for tokens that were not made by Encode for the
// same scope.
var ErrInvalid = errors.New("invalid page token")

type token struct {
	After string `json:"a"`
	Scope string `json:"s,omitempty"`
}

// Encode returns the token for the page after key, within scope.
func Encode(after, scope string) string {
	b, _ := json.Marshal(token{After: after, Scope: scope})
	return base64.RawURLEncoding.EncodeToString(b)
}

// Decode returns the key a token continues after; "" gives "" (first page).
func Decode(tok, scope string) (string, error) {
	if tok == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", ErrInvalid
	}
	var t token
	if err := json.Unmarshal(b, &t); err != nil || t.After == "" || t.Scope != scope {
		return "", ErrInvalid
	}
	return t.After, nil
}

// Size clamps a requested page size: 0 means def, above max means max.
// Negative sizes are rejected by request validation before this.
func Size(requested int32, def, max int) int {
	switch {
	case requested <= 0:
		return def
	case int(requested) > max:
		return max
	default:
		return int(requested)
	}
}

// MaxPageBytes bounds one page by (approximate) encoded size as well as by
// count, so that a page of the largest items allowed fits in a gRPC
// message with room to spare (1000 orders of 100 long lines each would be
// ~13 MB), and so that what a client that never reads its answers can make
// a server hold stays small (see mesh.ServerConfig.MaxConcurrentStreams).
const MaxPageBytes = 256 << 10

// Page cuts a page from rows, which the store read with a limit of size+1
// (one extra says whether a next page exists): at most size rows and, past
// the first row, at most MaxPageBytes by bytesOf. It returns the page and
// the token of the next one ("" when rows are exhausted); key gives the
// keyset position a row's successor starts after.
func Page[T any](rows []T, size int, scope string, bytesOf func(T) int, key func(T) string) ([]T, string) {
	total := 0
	for i, r := range rows {
		if i == size {
			break
		}
		total += bytesOf(r)
		if i > 0 && total > MaxPageBytes {
			return rows[:i], Encode(key(rows[i-1]), scope)
		}
	}
	if len(rows) <= size {
		return rows, ""
	}
	return rows[:size], Encode(key(rows[size-1]), scope)
}
