// Package validate collects field violations for request validation; the
// checks every service shares (ids, page sizes, required strings) live here,
// service-specific ones beside each service's contract.
package validate

import (
	"github.com/google/uuid"
	"golang.org/x/text/secure/precis"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// Violations accumulates every bad field of one request.
type Violations []*errdetails.BadRequest_FieldViolation

// Add records that field is bad, and why.
func (v *Violations) Add(field, desc string) {
	*v = append(*v, &errdetails.BadRequest_FieldViolation{Field: field, Description: desc})
}

// ID checks a required resource id: ids are UUID strings (UUIDv7 when the
// server made them).
func (v *Violations) ID(field, id string) {
	if id == "" {
		v.Add(field, "required")
		return
	}
	if _, err := uuid.Parse(id); err != nil || len(id) != 36 {
		v.Add(field, "must be a UUID such as 0192f7a4-7c4e-7d1a-9b7e-2f5c3a1d8e90")
	}
}

// PageSize checks a list request's page_size: 0 means the default, and
// sizes above the maximum are lowered to it, so only negatives are bad.
func (v *Violations) PageSize(field string, n int32) {
	if n < 0 {
		v.Add(field, "must not be negative")
	}
}

// Text checks a string that names or identifies something (a product id,
// an idempotency key) with the PRECIS OpaqueString profile (RFC 8265):
// valid UTF-8, no control characters (NUL included), no invisible or
// bidirectional-override characters. PostgreSQL refuses NUL in text where
// SQLite stores it, so this also keeps both backends answering alike.
func (v *Violations) Text(field, s string, max int) {
	switch {
	case s == "":
		v.Add(field, "required")
	case len(s) > max:
		v.Add(field, "too long")
	default:
		if _, err := precis.OpaqueString.String(s); err != nil {
			v.Add(field, Unprintable)
		}
	}
}

// Unprintable is the description of a string PRECIS refuses.
const Unprintable = "must be valid UTF-8 without control, invisible (zero-width) or bidirectional-override characters"

// MaxEtagLen bounds an etag a client sends back.
const MaxEtagLen = 64

// Etag checks an optional etag: short and printable (it may be echoed in
// logs); whether it matches is the use case's question.
func (v *Violations) Etag(field, s string) {
	if s == "" {
		return
	}
	if len(s) > MaxEtagLen {
		v.Add(field, "too long: send back the etag of a read")
		return
	}
	v.Text(field, s, MaxEtagLen)
}
