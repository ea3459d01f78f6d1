package user

import (
	"context"

	"github.com/google/uuid"
)

// AccessToken signs an access token for subject with roles, for tests
// that need a principal without an account behind it (an admin).
func (s *Service) AccessToken(ctx context.Context, subject string, roles ...string) (string, error) {
	t, err := s.issue(ctx, User{ID: subject, Roles: roles}, uuid.NewString())
	return t.Access, err
}
