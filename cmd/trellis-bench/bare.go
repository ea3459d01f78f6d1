package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"

	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/sqldb"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/token"
	"github.com/trellis-mesh/trellis/services/user"
)

// serveBareGateway runs grpc-gateway's ServeMux with its defaults over a
// plain grpc-go client of the user service at --upstream: no middleware,
// no mesh client. It is the baseline that shows what Trellis's gateway
// layer (request ids, metrics, limits, CORS, error model, breaker,
// deadlines) costs over the library it is built on.
func serveBareGateway(args []string) error {
	fs := flag.NewFlagSet("serve-bare-gateway", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "HTTP listen address")
	upstream := fs.String("upstream", "", "user service gRPC address")
	_ = fs.Parse(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	conn, err := grpc.NewClient(*upstream, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	mux := runtime.NewServeMux()
	if err := userv1.RegisterUserServiceHandlerClient(ctx, mux, userv1.NewUserServiceClient(conn)); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// serveBare runs the user service on a bare grpc-go server: the same
// handlers and SQLite store as `trellis run --target user`, without the
// mesh chain. It is scenario 1's baseline.
func serveBare(args []string) error {
	fs := flag.NewFlagSet("serve-bare", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "gRPC listen address")
	dataDir := fs.String("data-dir", "", "SQLite directory")
	verify := fs.String("verify", "cached", "access tokens: cached (verified, verified tokens remembered, as Trellis does), full (verified on every call) or none (not looked at: the caller is the x-user-id header, as behind a proxy that authenticated it; the baseline of what verifying costs)")
	_ = fs.Parse(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	db, err := sqldb.Open(ctx, sqldb.Config{Name: "user", DataDir: *dataDir})
	if err != nil {
		return err
	}
	defer db.Close()
	store, err := user.NewSQLStore(ctx, db)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	svc := user.NewService(store, user.Config{BcryptCost: bcrypt.MinCost})
	v := &token.Verifier{Issuer: token.DefaultIssuer, Audience: token.DefaultAudience, Keys: svc.TokenKeys()}
	if *verify == "cached" {
		v.Cache = token.NewCache(10_000)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(bareAuth(v, *verify == "none")))
	userv1.RegisterUserServiceServer(srv, user.NewGRPC(svc))
	userv1.RegisterAuthServiceServer(srv, user.NewAuthGRPC(svc))
	go func() { <-ctx.Done(); srv.GracefulStop() }()
	fmt.Println("listening", lis.Addr())
	return srv.Serve(lis)
}

// bareAuth is the least a server must do with a bearer token for the use
// cases to know their caller: verify it and put the principal in the
// context — or, with unverified, take the caller's id from a header.
func bareAuth(v *token.Verifier, unverified bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if unverified {
			if id := metadata.ValueFromIncomingContext(ctx, "x-user-id"); len(id) > 0 {
				return handler(mesh.WithPrincipal(ctx, &mesh.Principal{Subject: id[0]}, ""), req)
			}
			return handler(ctx, req)
		}
		vals := metadata.ValueFromIncomingContext(ctx, "authorization")
		if len(vals) == 0 {
			return handler(ctx, req)
		}
		raw := strings.TrimPrefix(vals[0], "Bearer ")
		var p *mesh.Principal
		{
			var err error
			if p, err = v.Verify(ctx, raw); err != nil {
				return nil, status.Error(codes.Unauthenticated, "bad token")
			}
		}
		return handler(mesh.WithPrincipal(ctx, p, raw), req)
	}
}
