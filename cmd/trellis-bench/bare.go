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
	"syscall"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"

	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/sqldb"
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
	srv := grpc.NewServer()
	userv1.RegisterUserServiceServer(srv, user.NewGRPC(user.NewService(store, user.Config{BcryptCost: bcrypt.MinCost})))
	go func() { <-ctx.Done(); srv.GracefulStop() }()
	fmt.Println("listening", lis.Addr())
	return srv.Serve(lis)
}
