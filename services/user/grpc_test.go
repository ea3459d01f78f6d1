package user_test

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/sqldb"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/token"
	"github.com/trellis-mesh/trellis/services/user"
)

// startUser serves the user service through the mesh server on a loopback
// port, with end-user authentication, and returns the store behind it and
// a plain client that calls as an admin (the authorization rules have
// their own matrix test).
func startUser(t *testing.T) (userv1.UserServiceClient, user.Store) {
	t.Helper()
	return startUserOn(t, sqldb.SQLite)
}

// startUserOn is startUser on the given backend.
func startUserOn(t *testing.T, backend sqldb.Dialect) (userv1.UserServiceClient, user.Store) {
	t.Helper()
	store, err := user.NewSQLStore(context.Background(), testenv.OpenDB(t, backend, "user"))
	if err != nil {
		t.Fatal(err)
	}
	svc := user.NewService(store, user.Config{BcryptCost: bcrypt.MinCost})
	m, _ := testenv.Metrics()
	srv := mesh.NewServer(mesh.ServerConfig{Auth: mesh.Authentication{
		Tokens: &token.Verifier{Issuer: token.DefaultIssuer, Audience: token.DefaultAudience, Keys: svc.TokenKeys()},
		Public: user.PublicMethods,
	}}, testenv.Logger(), m)
	srv.Register(&userv1.UserService_ServiceDesc, user.NewGRPC(svc), user.Validate)
	srv.Register(&userv1.AuthService_ServiceDesc, user.NewAuthGRPC(svc), user.Validate)
	admin, err := svc.AccessToken(context.Background(), uuid.NewString(), user.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	return userv1.NewUserServiceClient(testenv.Dial(t, testenv.Serve(t, srv), grpc.WithPerRPCCredentials(testenv.NewBearer(admin)))), store
}

func create(t *testing.T, c userv1.UserServiceClient, email string) *userv1.User {
	t.Helper()
	resp, err := c.CreateUser(context.Background(), &userv1.CreateUserRequest{Email: email, Name: "Ada Lovelace", Password: "correct-horse"})
	if err != nil {
		t.Fatalf("CreateUser(%s): %v", email, err)
	}
	return resp.GetUser()
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got code %v (%v), want %v", got, err, want)
	}
}

func TestCreateUserStoresOnlyAHash(t *testing.T) {
	t.Parallel()
	c, store := startUser(t)
	u := create(t, c, "ada@example.com")
	if _, err := uuid.Parse(u.GetId()); err != nil || uuid.MustParse(u.GetId()).Version() != 7 {
		t.Errorf("id %q: want a UUIDv7", u.GetId())
	}
	if u.GetEmail() != "ada@example.com" || u.GetName() != "Ada Lovelace" || !u.GetCreateTime().IsValid() {
		t.Errorf("created user = %v", u)
	}
	stored, err := store.Get(context.Background(), u.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if stored.PasswordHash == "correct-horse" || bcrypt.CompareHashAndPassword([]byte(stored.PasswordHash), []byte("correct-horse")) != nil {
		t.Errorf("stored password is not a bcrypt hash of the password: %q", stored.PasswordHash)
	}
	// The response must not carry the password or hash in any field.
	b, _ := proto.Marshal(u)
	if strings.Contains(string(b), "correct-horse") || strings.Contains(string(b), stored.PasswordHash) {
		t.Error("response carries the password or its hash")
	}
}

func TestCreateUserDuplicateEmailIsAlreadyExists(t *testing.T) {
	t.Parallel()
	c, _ := startUser(t)
	create(t, c, "ada@example.com")
	_, err := c.CreateUser(context.Background(), &userv1.CreateUserRequest{Email: "ADA@Example.COM", Name: "Other", Password: "another-pass"})
	wantCode(t, err, codes.AlreadyExists)
}

func TestInvalidRequests(t *testing.T) {
	t.Parallel()
	c, _ := startUser(t)
	ctx := context.Background()
	existing := create(t, c, "ada@example.com")
	long := strings.Repeat("x", 201)
	tests := []struct {
		name string
		call func() error
		want []string // violated fields, in order
	}{
		{"create: all empty", func() error { _, err := c.CreateUser(ctx, &userv1.CreateUserRequest{}); return err }, []string{"email", "name", "password"}},
		{"create: bad email", func() error {
			_, err := c.CreateUser(ctx, &userv1.CreateUserRequest{Email: "Ada <ada@example.com>", Name: "A", Password: "12345678"})
			return err
		}, []string{"email"}},
		{"create: email without domain dot", func() error {
			_, err := c.CreateUser(ctx, &userv1.CreateUserRequest{Email: "ada@localhost", Name: "A", Password: "12345678"})
			return err
		}, []string{"email"}},
		{"create: name too long, password too short", func() error {
			_, err := c.CreateUser(ctx, &userv1.CreateUserRequest{Email: "b@example.com", Name: long, Password: "1234567"})
			return err
		}, []string{"name", "password"}},
		{"create: blank name, password over 72 bytes", func() error {
			_, err := c.CreateUser(ctx, &userv1.CreateUserRequest{Email: "b@example.com", Name: "   ", Password: strings.Repeat("p", 73)})
			return err
		}, []string{"name", "password"}},
		{"get: empty id", func() error { _, err := c.GetUser(ctx, &userv1.GetUserRequest{}); return err }, []string{"id"}},
		{"get: not a uuid", func() error { _, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: "42"}); return err }, []string{"id"}},
		{"delete: not a uuid", func() error { _, err := c.DeleteUser(ctx, &userv1.DeleteUserRequest{Id: "x"}); return err }, []string{"id"}},
		{"batch: none", func() error { _, err := c.BatchGetUsers(ctx, &userv1.BatchGetUsersRequest{}); return err }, []string{"ids"}},
		{"batch: 101 ids", func() error {
			ids := make([]string, 101)
			for i := range ids {
				ids[i] = uuid.NewString()
			}
			_, err := c.BatchGetUsers(ctx, &userv1.BatchGetUsersRequest{Ids: ids})
			return err
		}, []string{"ids"}},
		{"batch: a bad id", func() error {
			_, err := c.BatchGetUsers(ctx, &userv1.BatchGetUsersRequest{Ids: []string{existing.GetId(), "nope"}})
			return err
		}, []string{"ids[1]"}},
		{"list: negative page size", func() error { _, err := c.ListUsers(ctx, &userv1.ListUsersRequest{PageSize: -1}); return err }, []string{"page_size"}},
		{"list: forged token", func() error { _, err := c.ListUsers(ctx, &userv1.ListUsersRequest{PageToken: "bm9wZQ"}); return err }, []string{"page_token"}},
		{"update: no mask", func() error {
			_, err := c.UpdateUser(ctx, &userv1.UpdateUserRequest{User: &userv1.User{Id: existing.GetId(), Name: "B"}})
			return err
		}, []string{"update_mask"}},
		{"update: unknown and read-only paths", func() error {
			_, err := c.UpdateUser(ctx, &userv1.UpdateUserRequest{User: &userv1.User{Id: existing.GetId()},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"password", "create_time"}}})
			return err
		}, []string{"update_mask", "update_mask"}},
		{"update: bad email in mask", func() error {
			_, err := c.UpdateUser(ctx, &userv1.UpdateUserRequest{User: &userv1.User{Id: existing.GetId(), Email: "nope"},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"email"}}})
			return err
		}, []string{"user.email"}},
		{"update: missing id", func() error {
			_, err := c.UpdateUser(ctx, &userv1.UpdateUserRequest{User: &userv1.User{Name: "B"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}}})
			return err
		}, []string{"user.id"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			wantCode(t, err, codes.InvalidArgument)
			if diff := cmp.Diff(tt.want, testenv.Violations(err)); diff != "" {
				t.Errorf("violations (-want +got):\n%s", diff)
			}
		})
	}
}

func TestGetBatchAndNotFound(t *testing.T) {
	t.Parallel()
	c, _ := startUser(t)
	ctx := context.Background()
	a, b := create(t, c, "a@example.com"), create(t, c, "b@example.com")

	got, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: a.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(a, got.GetUser(), protocmp.Transform()); diff != "" {
		t.Errorf("GetUser (-want +got):\n%s", diff)
	}
	_, err = c.GetUser(ctx, &userv1.GetUserRequest{Id: uuid.NewString()})
	wantCode(t, err, codes.NotFound)

	batch, err := c.BatchGetUsers(ctx, &userv1.BatchGetUsersRequest{Ids: []string{b.GetId(), a.GetId()}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]*userv1.User{b, a}, batch.GetUsers(), protocmp.Transform()); diff != "" {
		t.Errorf("BatchGetUsers keeps request order (-want +got):\n%s", diff)
	}
	missing := uuid.NewString()
	_, err = c.BatchGetUsers(ctx, &userv1.BatchGetUsersRequest{Ids: []string{a.GetId(), missing}})
	wantCode(t, err, codes.NotFound)
	if !strings.Contains(status.Convert(err).Message(), missing) {
		t.Errorf("NotFound message %q does not name the missing id", status.Convert(err).Message())
	}
}

func TestListUsersPaginates(t *testing.T) {
	t.Parallel()
	c, _ := startUser(t)
	ctx := context.Background()
	var want []string
	for i := range 5 {
		want = append(want, create(t, c, "u"+string(rune('a'+i))+"@example.com").GetId())
	}
	var got []string
	token := ""
	pages := 0
	for {
		resp, err := c.ListUsers(ctx, &userv1.ListUsersRequest{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, u := range resp.GetUsers() {
			got = append(got, u.GetId())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("listed ids (-want +got):\n%s", diff)
	}
	if pages != 3 {
		t.Errorf("pages = %d, want 3 (2+2+1)", pages)
	}
	all, err := c.ListUsers(ctx, &userv1.ListUsersRequest{PageSize: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.GetUsers()) != 5 || all.GetNextPageToken() != "" {
		t.Errorf("page_size above max: got %d users, token %q", len(all.GetUsers()), all.GetNextPageToken())
	}
}

func TestUpdateUserHonoursFieldMask(t *testing.T) {
	t.Parallel()
	c, _ := startUser(t)
	ctx := context.Background()
	a := create(t, c, "a@example.com")
	create(t, c, "b@example.com")

	// Only name is in the mask: the email in the body is ignored.
	resp, err := c.UpdateUser(ctx, &userv1.UpdateUserRequest{
		User:       &userv1.User{Id: a.GetId(), Name: "Renamed", Email: "ignored@example.com"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetUser(); got.GetName() != "Renamed" || got.GetEmail() != "a@example.com" {
		t.Errorf("after name-only update: %v", got)
	}
	if !resp.GetUser().GetUpdateTime().AsTime().After(a.GetUpdateTime().AsTime()) {
		t.Error("update_time did not advance")
	}
	_, err = c.UpdateUser(ctx, &userv1.UpdateUserRequest{
		User:       &userv1.User{Id: a.GetId(), Email: "B@example.com"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"email"}},
	})
	wantCode(t, err, codes.AlreadyExists)
	_, err = c.UpdateUser(ctx, &userv1.UpdateUserRequest{
		User:       &userv1.User{Id: uuid.NewString(), Name: "X"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}},
	})
	wantCode(t, err, codes.NotFound)
}

func TestDeleteUser(t *testing.T) {
	t.Parallel()
	c, _ := startUser(t)
	ctx := context.Background()
	a := create(t, c, "a@example.com")
	if _, err := c.DeleteUser(ctx, &userv1.DeleteUserRequest{Id: a.GetId()}); err != nil {
		t.Fatal(err)
	}
	_, err := c.GetUser(ctx, &userv1.GetUserRequest{Id: a.GetId()})
	wantCode(t, err, codes.NotFound)
	_, err = c.DeleteUser(ctx, &userv1.DeleteUserRequest{Id: a.GetId()})
	wantCode(t, err, codes.NotFound)
}
