package app

import (
	"github.com/trellis-mesh/trellis/gateway"
	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
)

// addGateway builds the REST facade over mesh clients of both services.
func (a *App) addGateway() error {
	userConn, err := a.dial(TargetGateway, "user", a.upstream(a.cfg.UserUpstream, TargetUser), nil, userv1.File_trellis_user_v1_user_proto.Services().Get(0))
	if err != nil {
		return err
	}
	orderConn, err := a.dial(TargetGateway, "order", a.upstream(a.cfg.OrderUpstream, TargetOrder), nil, orderv1.File_trellis_order_v1_order_proto.Services().Get(0))
	if err != nil {
		return err
	}
	gw, err := gateway.New(gateway.Config{CORSOrigins: a.cfg.CORSOrigins(), Tracer: a.tp}, userConn, orderConn, a.log.With("component", TargetGateway), a.reg)
	if err != nil {
		return err
	}
	return a.addHTTP(TargetGateway, a.cfg.HTTPAddr, gw, gw.Ready)
}
