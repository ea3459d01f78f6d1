package app

import (
	"context"

	"github.com/trellis-mesh/trellis/gateway"
	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
)

// addGateway builds the REST facade over mesh clients of both services.
func (a *App) addGateway(context.Context) error {
	userConn, err := a.dial(TargetGateway, "user", a.upstream(TargetUser), nil, userv1.File_trellis_user_v1_user_proto.Services().Get(0))
	if err != nil {
		return err
	}
	orderConn, err := a.dial(TargetGateway, "order", a.upstream(TargetOrder), nil, orderv1.File_trellis_order_v1_order_proto.Services().Get(0))
	if err != nil {
		return err
	}
	gcfg := a.cfg.Gateway
	gcfg.Tracer = a.tp
	gw, err := gateway.New(gcfg, userConn, orderConn, a.log.With("component", TargetGateway), a.reg)
	if err != nil {
		return err
	}
	return a.addHTTP(TargetGateway, a.cfg.HTTPAddr, gw, gw.Ready)
}
