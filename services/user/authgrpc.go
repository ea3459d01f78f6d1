package user

import (
	"context"
	"encoding/json"

	"github.com/go-jose/go-jose/v4"
	"google.golang.org/protobuf/encoding/protojson"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/mesh/token"
)

// AuthGRPC adapts the sign-in use cases to userv1.AuthServiceServer.
type AuthGRPC struct {
	userv1.UnimplementedAuthServiceServer
	svc *Service
}

// NewAuthGRPC returns the gRPC adapter of svc's sign-in use cases.
func NewAuthGRPC(svc *Service) *AuthGRPC { return &AuthGRPC{svc: svc} }

// SignIn implements userv1.AuthServiceServer.
func (g *AuthGRPC) SignIn(ctx context.Context, req *userv1.SignInRequest) (*userv1.SignInResponse, error) {
	t, err := g.svc.SignIn(ctx, req.GetEmail(), req.GetPassword())
	if err != nil {
		return nil, err
	}
	return &userv1.SignInResponse{AccessToken: t.Access, TokenType: "Bearer", ExpiresIn: int32(t.ExpiresIn.Seconds()), RefreshToken: t.Refresh, UserId: t.UserID}, nil
}

// RefreshToken implements userv1.AuthServiceServer.
func (g *AuthGRPC) RefreshToken(ctx context.Context, req *userv1.RefreshTokenRequest) (*userv1.RefreshTokenResponse, error) {
	t, err := g.svc.Refresh(ctx, req.GetRefreshToken())
	if err != nil {
		return nil, err
	}
	return &userv1.RefreshTokenResponse{AccessToken: t.Access, TokenType: "Bearer", ExpiresIn: int32(t.ExpiresIn.Seconds()), RefreshToken: t.Refresh, UserId: t.UserID}, nil
}

// SignOut implements userv1.AuthServiceServer.
func (g *AuthGRPC) SignOut(ctx context.Context, req *userv1.SignOutRequest) (*userv1.SignOutResponse, error) {
	if err := g.svc.SignOut(ctx, req.GetRefreshToken()); err != nil {
		return nil, err
	}
	return &userv1.SignOutResponse{}, nil
}

// GetJwks implements userv1.AuthServiceServer: go-jose writes each key's
// JWK form, which is the message's JSON form field for field.
func (g *AuthGRPC) GetJwks(ctx context.Context, _ *userv1.GetJwksRequest) (*userv1.GetJwksResponse, error) {
	keys, err := g.svc.JWKS(ctx)
	if err != nil {
		return nil, err
	}
	out := &userv1.GetJwksResponse{}
	for _, k := range keys {
		b, err := json.Marshal(k)
		if err != nil {
			return nil, err
		}
		jwk := &userv1.JsonWebKey{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, jwk); err != nil {
			return nil, err
		}
		out.Keys = append(out.Keys, jwk)
	}
	return out, nil
}

// FetchJWKS is how other components get the user service's public keys:
// AuthService.GetJwks through client, parsed by go-jose (the message's
// JSON form is the JWK Set form) — the reverse of GetJwks above.
func FetchJWKS(client userv1.AuthServiceClient) token.FetchFunc {
	return func(ctx context.Context) ([]jose.JSONWebKey, error) {
		resp, err := client.GetJwks(ctx, &userv1.GetJwksRequest{})
		if err != nil {
			return nil, err
		}
		b, err := protojson.Marshal(resp)
		if err != nil {
			return nil, err
		}
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(b, &set); err != nil {
			return nil, err
		}
		return set.Keys, nil
	}
}

// PublicMethods are what an anonymous caller may call: sign up, sign in,
// refresh, sign out, and read the public keys.
var PublicMethods = []string{
	userv1.UserService_CreateUser_FullMethodName,
	userv1.AuthService_SignIn_FullMethodName,
	userv1.AuthService_RefreshToken_FullMethodName,
	userv1.AuthService_SignOut_FullMethodName,
	userv1.AuthService_GetJwks_FullMethodName,
}
