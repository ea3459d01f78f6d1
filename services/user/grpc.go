package user

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/mesh"
)

// GRPC adapts the Service to userv1.UserServiceServer: proto in, domain
// call, proto out. Errors pass through; the mesh edge turns them into
// statuses.
type GRPC struct {
	userv1.UnimplementedUserServiceServer
	svc *Service
}

// NewGRPC returns the gRPC adapter of svc.
func NewGRPC(svc *Service) *GRPC { return &GRPC{svc: svc} }

// ToProto converts a user for the wire; the password hash stays behind.
func ToProto(u User) *userv1.User {
	return &userv1.User{
		Id:         u.ID,
		Email:      u.Email,
		Name:       u.Name,
		CreateTime: timestamppb.New(u.CreateTime),
		UpdateTime: timestamppb.New(u.UpdateTime),
		Etag:       u.Etag(),
		Roles:      u.Roles,
	}
}

func toProtos(us []User) []*userv1.User {
	out := make([]*userv1.User, len(us))
	for i, u := range us {
		out[i] = ToProto(u)
	}
	return out
}

// CreateUser implements userv1.UserServiceServer.
func (g *GRPC) CreateUser(ctx context.Context, req *userv1.CreateUserRequest) (*userv1.CreateUserResponse, error) {
	u, err := g.svc.Create(ctx, req.GetEmail(), req.GetName(), req.GetPassword())
	if err != nil {
		return nil, err
	}
	return &userv1.CreateUserResponse{User: ToProto(u)}, nil
}

// GetUser implements userv1.UserServiceServer.
func (g *GRPC) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	u, err := g.svc.Get(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return &userv1.GetUserResponse{User: ToProto(u)}, nil
}

// BatchGetUsers implements userv1.UserServiceServer.
func (g *GRPC) BatchGetUsers(ctx context.Context, req *userv1.BatchGetUsersRequest) (*userv1.BatchGetUsersResponse, error) {
	us, err := g.svc.BatchGet(ctx, req.GetIds())
	if err != nil {
		return nil, err
	}
	return &userv1.BatchGetUsersResponse{Users: toProtos(us)}, nil
}

// ListUsers implements userv1.UserServiceServer.
func (g *GRPC) ListUsers(ctx context.Context, req *userv1.ListUsersRequest) (*userv1.ListUsersResponse, error) {
	us, next, err := g.svc.List(ctx, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &userv1.ListUsersResponse{Users: toProtos(us), NextPageToken: next}, nil
}

// UpdateUser implements userv1.UserServiceServer.
func (g *GRPC) UpdateUser(ctx context.Context, req *userv1.UpdateUserRequest) (*userv1.UpdateUserResponse, error) {
	var p Patch
	for _, path := range req.GetUpdateMask().GetPaths() {
		switch path {
		case "email":
			p.Email = &req.User.Email
		case "name":
			p.Name = &req.User.Name
		}
	}
	u, err := g.svc.Update(ctx, req.GetUser().GetId(), p, mesh.Etag(ctx, req.GetUser().GetEtag()))
	if err != nil {
		return nil, err
	}
	return &userv1.UpdateUserResponse{User: ToProto(u)}, nil
}

// DeleteUser implements userv1.UserServiceServer.
func (g *GRPC) DeleteUser(ctx context.Context, req *userv1.DeleteUserRequest) (*userv1.DeleteUserResponse, error) {
	if err := g.svc.Delete(ctx, req.GetId(), mesh.Etag(ctx, req.GetEtag())); err != nil {
		return nil, err
	}
	return &userv1.DeleteUserResponse{}, nil
}
