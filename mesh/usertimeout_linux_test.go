package mesh_test

import (
	"context"
	"net"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/connlimit"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
)

// recorder keeps the sockets its listener accepts, passed on unwrapped.
type recorder struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (r *recorder) Accept() (net.Conn, error) {
	c, err := r.Listener.Accept()
	if err == nil {
		r.mu.Lock()
		r.conns = append(r.conns, c)
		r.mu.Unlock()
	}
	return c, err
}

// TestServerSocketsGiveUpOnADeadPeer: every connection a mesh server
// accepts has TCP_USER_TIMEOUT at the keepalive timeout (20 s), with the
// connection limits on (the flags' default) as with them off. grpc-go
// sets it only on a *net.TCPConn, which the limits' wrapper hid: 0 (the
// kernel's default; only the keepalive ping, up to 2 min 20 s after the
// peer went, closed the connection) before the server set it.
func TestServerSocketsGiveUpOnADeadPeer(t *testing.T) {
	for _, lim := range []connlimit.Limits{{}, {Max: mesh.DefaultMaxConns, PerClient: mesh.DefaultMaxConnsPerClient}} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		rec := &recorder{Listener: lis}
		m, _ := testenv.Metrics()
		srv := mesh.NewServer(mesh.ServerConfig{Name: "user", Conns: lim}, testenv.Logger(), m)
		srv.Register(&userv1.UserService_ServiceDesc, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
			return okUser, nil
		}}, validate)
		done := make(chan error, 1)
		go func() { done <- srv.Serve(rec) }()
		client := dialMesh(t, lis.Addr().String(), mesh.ClientConfig{})
		if _, err := client.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}); err != nil {
			t.Fatal(err)
		}
		rec.mu.Lock()
		for _, c := range rec.conns {
			raw, err := c.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var ms int
			var optErr error
			if err := raw.Control(func(fd uintptr) {
				ms, optErr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
			}); err != nil || optErr != nil {
				t.Fatal(err, optErr)
			}
			if ms != 20000 {
				t.Errorf("limits %+v: TCP_USER_TIMEOUT %d ms, want 20000", lim, ms)
			}
		}
		if len(rec.conns) == 0 {
			t.Errorf("limits %+v: no connection accepted", lim)
		}
		rec.mu.Unlock()
		srv.Shutdown(context.Background())
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
