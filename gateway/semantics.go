package gateway

import (
	"context"
	"net/http"

	"google.golang.org/protobuf/proto"

	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
)

// httpSemantics gives REST answers their status: 201 with Location for
// creates, 204 with no body for deletes; and an ETag header wherever the
// answer is one user or order (send it back as If-Match to change it
// conditionally).
func httpSemantics(ctx context.Context, w http.ResponseWriter, m proto.Message) error {
	if e, ok := m.(interface{ GetUser() *userv1.User }); ok && e.GetUser().GetEtag() != "" {
		w.Header().Set("ETag", `"`+e.GetUser().GetEtag()+`"`)
	}
	if e, ok := m.(interface{ GetOrder() *orderv1.Order }); ok && e.GetOrder().GetEtag() != "" {
		w.Header().Set("ETag", `"`+e.GetOrder().GetEtag()+`"`)
	}
	switch m := m.(type) {
	case *userv1.CreateUserResponse:
		w.Header().Set("Location", "/api/v1/users/"+m.GetUser().GetId())
		w.WriteHeader(http.StatusCreated)
	case *orderv1.CreateOrderResponse:
		w.Header().Set("Location", "/api/v1/orders/"+m.GetOrder().GetId())
		w.WriteHeader(http.StatusCreated)
	case *userv1.DeleteUserResponse:
		w.WriteHeader(http.StatusNoContent)
	case *userv1.SignInResponse:
		sessionResponse(ctx, w, m)
	case *userv1.RefreshTokenResponse:
		sessionResponse(ctx, w, m)
	}
	return nil
}
