package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/apperr"
	"github.com/trellis-mesh/trellis/internal/validate"
	"github.com/trellis-mesh/trellis/mesh"
)

const overviewRoute = "/api/v1/users/{id}:overview"

// overviewResponse is the body of GET /api/v1/users/{id}:overview.
type overviewResponse struct {
	User            json.RawMessage   `json:"user"`
	RecentOrders    []json.RawMessage `json:"recentOrders"`
	OrdersAvailable bool              `json:"ordersAvailable"`
	OrdersError     string            `json:"ordersError,omitempty"`
}

// overview fetches a user and their recent orders concurrently under one
// deadline. The user is essential: if that call fails, the orders call is
// cancelled and the error returned. The orders are not: if the order
// service fails, the user is returned with ordersAvailable false and the
// reason, so a page can still render (graceful degradation).
func (g *Gateway) overview(w http.ResponseWriter, r *http.Request, params map[string]string) {
	setRoute(r.Context(), overviewRoute)
	id := params["id"]
	var v validate.Violations
	v.ID("id", id)
	if len(v) > 0 {
		g.writeError(r.Context(), nil, nil, w, r, apperr.InvalidArgument(v).Err())
		return
	}
	// The overview calls on the signed-in user's behalf.
	ctx, cancel := context.WithTimeout(mesh.ForwardToken(r.Context()), g.cfg.OverviewTimeout)
	defer cancel()

	var (
		wg        sync.WaitGroup
		user      *userv1.GetUserResponse
		userErr   error
		orders    *orderv1.ListOrdersResponse
		ordersErr error
	)
	wg.Go(func() {
		user, userErr = g.users.GetUser(ctx, &userv1.GetUserRequest{Id: id})
		if userErr != nil {
			cancel() // nothing to show without the user: stop the orders call
		}
	})
	wg.Go(func() {
		orders, ordersErr = g.orders.ListOrders(ctx, &orderv1.ListOrdersRequest{UserId: id, PageSize: g.cfg.OverviewOrders})
	})
	wg.Wait()
	if userErr != nil {
		g.writeError(r.Context(), nil, nil, w, r, userErr)
		return
	}
	resp := overviewResponse{OrdersAvailable: ordersErr == nil, RecentOrders: []json.RawMessage{}}
	resp.User, _ = protojson.Marshal(user.GetUser())
	if ordersErr != nil {
		resp.OrdersError = "orders are unavailable right now: " + status.Convert(ordersErr).Message()
		g.log.WarnContext(r.Context(), "overview degraded: orders unavailable", "request_id", mesh.RequestID(r.Context()), "error", ordersErr.Error())
	} else {
		for _, o := range orders.GetOrders() {
			b, _ := protojson.Marshal(o)
			resp.RecentOrders = append(resp.RecentOrders, b)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}
