package user

import (
	"net/mail"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/secure/precis"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/validate"
)

// Limits of the user contract.
const (
	MaxEmailLen    = 254
	MaxNameLen     = 200 // characters
	MinPasswordLen = 8   // bytes
	MaxPasswordLen = 72  // bytes: bcrypt ignores anything longer
	MaxBatch       = 100
	DefaultPage    = 50
	MaxPage        = 1000
)

// updatablePaths are the field-mask paths UpdateUser accepts.
var updatablePaths = map[string]bool{"email": true, "name": true}

// Validate checks a UserService request before any handler runs (the mesh
// server calls it) and returns every bad field.
func Validate(req any) []*errdetails.BadRequest_FieldViolation {
	var v validate.Violations
	switch r := req.(type) {
	case *userv1.CreateUserRequest:
		checkEmail(&v, "email", r.GetEmail())
		checkName(&v, "name", r.GetName())
		checkPassword(&v, "password", r.GetPassword())
	case *userv1.GetUserRequest:
		v.ID("id", r.GetId())
	case *userv1.SignInRequest:
		// Only presence and size: what a stored email or password looks
		// like is not told to someone guessing them.
		switch {
		case r.GetEmail() == "":
			v.Add("email", "required")
		case len(r.GetEmail()) > MaxEmailLen:
			v.Add("email", "at most 254 characters")
		}
		switch {
		case r.GetPassword() == "":
			v.Add("password", "required")
		case len(r.GetPassword()) > MaxPasswordLen:
			v.Add("password", "at most 72 bytes")
		}
	case *userv1.RefreshTokenRequest:
		switch {
		case r.GetRefreshToken() == "":
			v.Add("refresh_token", "required")
		case len(r.GetRefreshToken()) > MaxRefreshTokenLen:
			v.Add("refresh_token", "at most 128 characters")
		}
	case *userv1.SignOutRequest:
		if len(r.GetRefreshToken()) > MaxRefreshTokenLen {
			v.Add("refresh_token", "at most 128 characters")
		}
	case *userv1.DeleteUserRequest:
		v.ID("id", r.GetId())
		v.Etag("etag", r.GetEtag())
	case *userv1.BatchGetUsersRequest:
		switch n := len(r.GetIds()); {
		case n == 0:
			v.Add("ids", "at least one id is required")
		case n > MaxBatch:
			v.Add("ids", "at most 100 ids per call")
		default:
			for i, id := range r.GetIds() {
				v.ID("ids["+strconv.Itoa(i)+"]", id)
			}
		}
	case *userv1.ListUsersRequest:
		v.PageSize("page_size", r.GetPageSize())
	case *userv1.UpdateUserRequest:
		v.ID("user.id", r.GetUser().GetId())
		paths := r.GetUpdateMask().GetPaths()
		others := 0 // paths other than the etag precondition
		for _, p := range paths {
			if p != "etag" {
				others++
			}
		}
		if others == 0 {
			v.Add("update_mask", `required: name the fields to change ("email", "name")`)
		}
		v.Etag("user.etag", r.GetUser().GetEtag())
		for _, p := range paths {
			switch {
			case p == "etag":
				// The precondition, not a field to write: the gateway
				// derives masks from every key of a PATCH body.
			case !updatablePaths[p]:
				v.Add("update_mask", "unknown or read-only path "+strconv.Quote(p)+`: allowed are "email" and "name"`)
			case p == "email":
				checkEmail(&v, "user.email", r.GetUser().GetEmail())
			case p == "name":
				checkName(&v, "user.name", r.GetUser().GetName())
			}
		}
	}
	return v
}

// Emails, names and passwords are checked and normalised with the PRECIS
// profiles of RFC 8265/8266 (golang.org/x/text/secure/precis), the standard
// for strings people type to identify themselves, instead of rules of our
// own:
//   - email: UsernameCasePreserved — width-mapped (full-width "Ａ" is "A"),
//     NFC (a decomposed "é" is the composed one), and refused if it holds
//     spaces, controls, zero-width or bidi characters; uniqueness is then
//     case-insensitive. Look-alikes either become the same account or are
//     refused.
//   - name: Nickname — NFKC, spaces collapsed and trimmed, no controls or
//     invisible characters.
//   - password: OpaqueString — NFC, no controls; hashed in that form.

// NormalizeEmail returns the stored form of an email, or an error if PRECIS
// refuses it.
func NormalizeEmail(email string) (string, error) {
	return precis.UsernameCasePreserved.String(email)
}

// NormalizeName returns the stored form of a display name.
func NormalizeName(name string) (string, error) { return precis.Nickname.String(name) }

// NormalizePassword returns the form of a password that is hashed.
func NormalizePassword(pw string) (string, error) { return precis.OpaqueString.String(pw) }

func checkEmail(v *validate.Violations, field, email string) {
	switch {
	case email == "":
		v.Add(field, "required")
		return
	case len(email) > MaxEmailLen:
		v.Add(field, "at most 254 characters")
		return
	}
	norm, err := NormalizeEmail(email)
	if err != nil {
		v.Add(field, "must be an email address like name@example.com, without spaces, control, invisible or bidirectional characters")
		return
	}
	a, err := mail.ParseAddress(norm)
	if err != nil || a.Address != norm || !strings.Contains(norm[strings.LastIndexByte(norm, '@')+1:], ".") || len(norm) > MaxEmailLen {
		v.Add(field, "must be an email address like name@example.com")
	}
}

func checkName(v *validate.Violations, field, name string) {
	if !utf8.ValidString(name) {
		v.Add(field, "must be valid UTF-8")
		return
	}
	if len(name) > 4*MaxNameLen {
		v.Add(field, "at most 200 characters")
		return
	}
	norm, err := NormalizeName(name)
	switch {
	case strings.TrimSpace(name) == "":
		v.Add(field, "required")
	case err != nil:
		v.Add(field, validate.Unprintable)
	case utf8.RuneCountInString(norm) > MaxNameLen:
		v.Add(field, "at most 200 characters")
	}
}

func checkPassword(v *validate.Violations, field, pw string) {
	switch n := len(pw); {
	case n == 0:
		v.Add(field, "required")
	case n < MinPasswordLen:
		v.Add(field, "at least 8 bytes")
	case n > MaxPasswordLen:
		v.Add(field, "at most 72 bytes")
	default:
		if norm, err := NormalizePassword(pw); err != nil {
			v.Add(field, "must be valid UTF-8 without control characters")
		} else if len(norm) > MaxPasswordLen {
			v.Add(field, "at most 72 bytes")
		}
	}
}
