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
