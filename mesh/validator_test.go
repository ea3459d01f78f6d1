package mesh_test

import (
	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
)

// validate is the test service's request validator: the shape of a real
// one (a field violation per bad field, run before the handler) written
// here, so the mesh's tests depend on a contract (gen/) and not on a
// service's code.
func validate(req any) []*errdetails.BadRequest_FieldViolation {
	var v []*errdetails.BadRequest_FieldViolation
	bad := func(field, why string) {
		v = append(v, &errdetails.BadRequest_FieldViolation{Field: field, Description: why})
	}
	switch r := req.(type) {
	case *userv1.GetUserRequest:
		if _, err := uuid.Parse(r.GetId()); err != nil {
			bad("id", "must be a UUID")
		}
	case *userv1.CreateUserRequest:
		if r.GetEmail() == "" {
			bad("email", "required")
		}
		if r.GetName() == "" {
			bad("name", "required")
		}
		if len(r.GetPassword()) < 8 {
			bad("password", "at least 8 bytes")
		}
	}
	return v
}
