package app

import (
	"context"
	"fmt"

	goredisstore "github.com/throttled/throttled/v2/store/goredisstore.v9"

	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/eventcontract"
	"github.com/trellis-mesh/trellis/internal/quota"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/redisbreaker"
	"github.com/trellis-mesh/trellis/services/order"
	"github.com/trellis-mesh/trellis/services/user"
)

// addUser builds the user service: its store and outbox relay, its gRPC
// server.
func (a *App) addUser(ctx context.Context) error {
	db, err := a.openDB(ctx, "user")
	if err != nil {
		return err
	}
	store, err := user.NewSQLStore(ctx, db)
	if err != nil {
		return err
	}
	relay, err := a.addRelay(TargetUser, store.Outbox(), user.Stream, eventcontract.StreamSubjects(user.Stream))
	if err != nil {
		return err
	}
	ucfg := a.cfg.User
	ucfg.Committed = relay.Notify
	ucfg.Auth.Issuer, ucfg.Auth.Audience = a.cfg.Token.Issuer, a.cfg.Token.Audience
	if a.cfg.RedisURL != "" {
		// Replicas count an account's failed sign-ins together.
		client, err := a.redis()
		if err != nil {
			return err
		}
		if ucfg.Auth.SignInStore, err = goredisstore.NewCtx(client, "trellis:"+a.cfg.Events.Prefix+"signin:"); err != nil {
			return err
		}
		ucfg.Auth.SignInStoreTimeout = a.cfg.RedisTimeout
	}
	// Registered whether or not Redis is set: the alert and the
	// dashboard find the series on every user service.
	if ucfg.Auth.SignInStoreFailed, err = quota.StoreFailures(a.reg, a.log.With("component", TargetUser),
		"trellis_user_signin_limit_store_errors_total",
		"Failed-sign-in checks and counts the shared store (--redis-url) could not answer; the attempt was let through or its failure not counted.",
		"sign-in limit store unavailable; failed sign-ins pass uncounted"); err != nil {
		return err
	}
	svc := user.NewService(store, ucfg)
	a.tokenKeys = svc.TokenKeys()
	// The order service's reconciler asks for users as itself.
	srv, err := a.newServer(TargetUser, a.serverAuth(a.verifier(nil), user.PublicMethods, TargetOrder))
	if err != nil {
		return err
	}
	srv.Register(&userv1.UserService_ServiceDesc, user.NewGRPC(svc), user.Validate)
	srv.Register(&userv1.AuthService_ServiceDesc, user.NewAuthGRPC(svc), user.Validate)
	return a.addGRPC(TargetUser, a.cfg.UserAddr, srv, store.Ping)
}

// addOrder builds the order service: its store and outbox relay, its
// client of the user service (breaker shared through Redis when
// configured), the user-event consumer, the reconciler and its gRPC
// server.
func (a *App) addOrder(ctx context.Context) error {
	db, err := a.openDB(ctx, "order")
	if err != nil {
		return err
	}
	store, err := order.NewSQLStore(ctx, db)
	if err != nil {
		return err
	}
	var shared mesh.SharedBreakerState
	if a.cfg.RedisURL != "" {
		rs, err := redisbreaker.New(a.cfg.RedisURL, a.cfg.Events.Prefix, a.cfg.RedisTimeout)
		if err != nil {
			return fmt.Errorf("--redis-url: %w", err)
		}
		a.closers = append(a.closers, rs.Close)
		shared = rs
	}
	conn, err := a.dial(TargetOrder, "user", a.upstream(TargetUser), shared, userv1.File_trellis_user_v1_user_proto.Services().Get(0))
	if err != nil {
		return err
	}
	users := order.NewUserClient(userv1.NewUserServiceClient(conn))
	relay, err := a.addRelay(TargetOrder, store.Outbox(), order.Stream, eventcontract.StreamSubjects(order.Stream))
	if err != nil {
		return err
	}
	ocfg := a.cfg.Order
	ocfg.Committed = relay.Notify
	svc := order.NewService(store, users, ocfg)
	if err := a.addUserConsumer(svc); err != nil {
		return err
	}
	log := a.log.With("component", TargetOrder)
	a.workers = append(a.workers, func(ctx context.Context) { svc.RunReconciler(ctx, ocfg.ReconcileInterval, log) })
	srv, err := a.newServer(TargetOrder, a.serverAuth(a.verifier(conn), nil))
	if err != nil {
		return err
	}
	srv.Register(&orderv1.OrderService_ServiceDesc, order.NewGRPC(svc), order.Validate)
	return a.addGRPC(TargetOrder, a.cfg.OrderAddr, srv, store.Ping)
}
