package user_test

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

// TestLookAlikeEmailsAreOneAccountOrRefused runs on SQLite and PostgreSQL:
// the same answers on both, decided by PRECIS, not by what a backend
// happens to store.
func TestLookAlikeEmailsAreOneAccountOrRefused(t *testing.T) {
	t.Parallel()
	for _, backend := range testenv.Backends {
		t.Run(string(backend), func(t *testing.T) {
			t.Parallel()
			c, _ := startUserOn(t, backend)
			create(t, c, "ada@example.com")
			create(t, c, "jos\u00e9@example.com") // composed é
			tests := []struct {
				name, email, userName string
				want                  codes.Code
			}{
				{"upper case", "ADA@example.com", "Ada", codes.AlreadyExists},
				{"full-width letters", "\uff41\uff44\uff41@example.com", "Ada", codes.AlreadyExists},
				{"full-width at sign", "ada\uff20example.com", "Ada", codes.AlreadyExists},
				{"decomposed é", "jose\u0301@example.com", "Jose", codes.AlreadyExists},
				{"zero-width space", "ada\u200b@example.com", "Ada", codes.InvalidArgument},
				{"zero-width joiner", "a\u200dda@example.com", "Ada", codes.InvalidArgument},
				{"bidi override", "\u202eada@example.com", "Ada", codes.InvalidArgument},
				{"NUL", "ada\x00@example.com", "Ada", codes.InvalidArgument},
				{"space", "a da@example.com", "Ada", codes.InvalidArgument},
				{"NUL in name", "nul@example.com", "A\x00da", codes.InvalidArgument},
				{"control in name", "ctl@example.com", "A\x1bda", codes.InvalidArgument},
				{"bidi override in name", "bidi@example.com", "A\u202eda", codes.InvalidArgument},
				{"zero-width in name", "zw@example.com", "A\u200bda", codes.InvalidArgument},
				{"byte-order mark in name", "bom@example.com", "\ufeffAda", codes.InvalidArgument},
			}
			for _, tt := range tests {
				_, err := c.CreateUser(context.Background(), &userv1.CreateUserRequest{Email: tt.email, Name: tt.userName, Password: "correct-horse"})
				if got := status.Code(err); got != tt.want {
					t.Errorf("%s: got %v (%v), want %v", tt.name, got, err, tt.want)
				}
				if msg := status.Convert(err).Message(); strings.Contains(msg, tt.email) || strings.Contains(msg, "ada@example.com") || strings.Contains(msg, "jos") {
					t.Errorf("%s: message names an address: %v", tt.name, err)
				}
			}
			// Names are stored in their normalised (NFKC, spaces collapsed) form.
			u := create(t, c, "spaces@example.com")
			resp, err := c.UpdateUser(context.Background(), &userv1.UpdateUserRequest{
				User: &userv1.User{Id: u.GetId(), Name: "  Ada\u3000 Lovelace "}, UpdateMask: mask("name")})
			if err != nil || resp.GetUser().GetName() != "Ada Lovelace" {
				t.Errorf("name normalisation: got %q, %v; want %q", resp.GetUser().GetName(), err, "Ada Lovelace")
			}
		})
	}
}

// nasty are runes that break naive string handling: controls, invisibles,
// bidi, surrogate halves' replacement, combining marks, full-width forms,
// and ordinary letters so that some strings are valid.
var nasty = []rune{0, 1, '\t', '\n', 0x7f, 0x85, 0x200b, 0x200d, 0x202e, 0x2066, 0xfeff, 0xfffd, 0x0301, 0xff21, 0x3000,
	'a', 'b', 'Z', '.', '@', '-', '+', ' ', 'é', 'ß', 'İ', '中', '😀'}

// TestAnyStringIsAcceptedOrInvalidArgument is a property test over both
// backends: whatever string a client sends as email, name or password
// (random mixes of nasty runes; invalid UTF-8 cannot be encoded by a client
// and is covered by mesh's malformed-protobuf test), the answer is
// success or INVALID_ARGUMENT/ALREADY_EXISTS — never INTERNAL, UNKNOWN or
// UNAVAILABLE — and both backends agree.
func TestAnyStringIsAcceptedOrInvalidArgument(t *testing.T) {
	t.Parallel()
	clients := map[string]userv1.UserServiceClient{}
	for _, b := range testenv.Backends {
		clients[string(b)], _ = startUserOn(t, b)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	random := func() string {
		var sb strings.Builder
		for range rng.IntN(12) {
			sb.WriteRune(nasty[rng.IntN(len(nasty))])
		}
		return sb.String()
	}
	for range 300 {
		email := random() + "@ex" + random() + ".com"
		name, pw := random(), random()+"password"
		codesSeen := map[string]codes.Code{}
		for b, c := range clients {
			_, err := c.CreateUser(context.Background(), &userv1.CreateUserRequest{Email: email, Name: name, Password: pw})
			code := status.Code(err)
			switch code {
			case codes.OK, codes.InvalidArgument, codes.AlreadyExists:
			default:
				t.Fatalf("%s: email %q name %q password %q: got %v", b, email, name, pw, err)
			}
			codesSeen[b] = code
		}
		if codesSeen["sqlite"] != codesSeen["postgres"] {
			t.Errorf("email %q name %q: SQLite %v, PostgreSQL %v", email, name, codesSeen["sqlite"], codesSeen["postgres"])
		}
	}
}

func mask(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }
