package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/sqldb"
	"github.com/trellis-mesh/trellis/services/user"
)

// serveBare runs the user service on a bare grpc-go server: the same
// handlers and SQLite store as `trellis run --target user`, without the
// mesh chain. It is scenario 1's baseline.
func serveBare(args []string) int {
	fs := flag.NewFlagSet("serve-bare", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "gRPC listen address")
	dataDir := fs.String("data-dir", "", "SQLite directory")
	_ = fs.Parse(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	db, err := sqldb.Open(ctx, sqldb.Config{Name: "user", DataDir: *dataDir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer db.Close()
	store, err := user.NewSQLStore(ctx, db)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := grpc.NewServer()
	userv1.RegisterUserServiceServer(srv, user.NewGRPC(user.NewService(store, user.Config{BcryptCost: bcrypt.MinCost})))
	go func() { <-ctx.Done(); srv.GracefulStop() }()
	fmt.Println("listening", lis.Addr())
	if err := srv.Serve(lis); err != nil {
		return 1
	}
	return 0
}
