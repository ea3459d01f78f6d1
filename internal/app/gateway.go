package app

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
	goredisstore "github.com/throttled/throttled/v2/store/goredisstore.v9"

	"github.com/trellis-mesh/trellis/internal/redact"

	"github.com/trellis-mesh/trellis/gateway"
	orderv1 "github.com/trellis-mesh/trellis/gen/trellis/order/v1"
	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/mesh"
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
	gcfg.Tokens = a.verifier(userConn)
	gcfg.UpstreamTimeout = a.cfg.Upstream.Timeout
	if gcfg.Shed && a.cfg.Server.Shed.Enabled {
		gcfg.Shedder = mesh.NewLimiter(a.cfg.Server.Shed, TargetGateway, a.metrics)
	}
	if a.cfg.RedisURL != "" {
		// Gateway replicas share their clients' counters.
		client, err := a.redis()
		if err != nil {
			return err
		}
		if gcfg.Limits.Store, err = goredisstore.NewCtx(client, "trellis:"+a.cfg.Events.Prefix+"ratelimit:"); err != nil {
			return err
		}
		gcfg.Limits.StoreTimeout = a.cfg.RedisTimeout
	}
	gw, err := gateway.New(gcfg, userConn, orderConn, a.log.With("component", TargetGateway), a.reg)
	if err != nil {
		return err
	}
	return a.addHTTP(TargetGateway, a.cfg.HTTPAddr, gw, gw.Ready, gw.LimitConnections)
}

// redis is the process's Redis client for rate-limit counters (the
// gateway's per client, the user service's per account), made once.
func (a *App) redis() (*redis.Client, error) {
	if a.redisClient != nil {
		return a.redisClient, nil
	}
	opt, err := redis.ParseURL(a.cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("--redis-url: %s", redact.String(err.Error()))
	}
	// A check must not hold a request for long: Redis answers within
	// --redis-timeout or the limits let the request through.
	t := a.cfg.RedisTimeout
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.MaxRetries = t, t, t, -1
	opt.ContextTimeoutEnabled = true // a check's own deadline bounds it too
	a.redisClient = redis.NewClient(opt)
	a.closers = append(a.closers, a.redisClient.Close)
	return a.redisClient, nil
}
