package mesh_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/apperr"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
)

// TestClientSideFailuresNeverTripTheBreaker provokes every failure the
// calling side of a call can make by itself, each more times than the
// breaker tolerates, and checks that the next good call still goes
// through: none of them is the upstream's fault.
func TestClientSideFailuresNeverTripTheBreaker(t *testing.T) {
	t.Parallel()
	big := &userv1.GetUserResponse{User: &userv1.User{Id: validID, Name: strings.Repeat("x", 4096)}}
	tests := []struct {
		name     string
		dialOpts []grpc.DialOption
		req      *userv1.GetUserRequest
		reply    *userv1.GetUserResponse
		wantCode codes.Code
		wantText string
	}{
		{"request not encodable (invalid UTF-8)", nil, &userv1.GetUserRequest{Id: "\xff" + validID[1:]}, okUser, codes.InvalidArgument, "not valid UTF-8"},
		{"request over the send limit", nil, &userv1.GetUserRequest{Id: strings.Repeat("a", mesh.MaxRequestBytes+1)}, okUser, codes.InvalidArgument, "larger than upstream user accepts"},
		{"answer over the receive limit", []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1024))}, &userv1.GetUserRequest{Id: validID}, big, codes.ResourceExhausted, "larger than this caller accepts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var calls atomic.Int32
			reply := tt.reply
			addr, _, _ := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
				calls.Add(1)
				return reply, nil
			}}, mesh.ServerConfig{})
			m, _ := testenv.Metrics()
			conn, err := mesh.Dial(mesh.ClientConfig{Name: "user", Target: addr, Breaker: mesh.BreakerConfig{Timeout: time.Minute}}, testenv.Logger(), m, tt.dialOpts...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			c := userv1.NewUserServiceClient(conn)
			for range 5 {
				_, err := c.GetUser(context.Background(), tt.req)
				if status.Code(err) != tt.wantCode || !strings.Contains(status.Convert(err).Message(), tt.wantText) {
					t.Fatalf("got %v, want %v containing %q", err, tt.wantCode, tt.wantText)
				}
				if strings.Contains(err.Error(), "grpc:") || strings.Contains(err.Error(), "proto:") {
					t.Errorf("library text reached the caller: %v", err)
				}
			}
			// The breaker is still closed: a good call reaches the upstream.
			reply = okUser
			if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}); err != nil {
				t.Fatalf("good call after client-side failures: %v (breaker opened?)", err)
			}
		})
	}
}

// TestServerFaultsStillTripTheBreaker is the other half: the upstream's
// own INTERNAL answers (with the mesh trailer) count.
func TestServerFaultsStillTripTheBreaker(t *testing.T) {
	t.Parallel()
	addr, _, _ := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		return nil, status.Error(codes.Internal, "boom")
	}}, mesh.ServerConfig{})
	c := dialMesh(t, addr, mesh.ClientConfig{Breaker: mesh.BreakerConfig{Timeout: time.Minute}})
	for range 3 {
		if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}); status.Code(err) != codes.Internal {
			t.Fatalf("got %v, want Internal", err)
		}
	}
	_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID})
	if !strings.Contains(err.Error(), "circuit breaker open") {
		t.Fatalf("after 3 server faults: got %v, want the open breaker", err)
	}
}

// TestDependencyUnavailableDoesNotTripTheBreaker: an upstream answering
// "my own dependency is unavailable" (apperr.DependencyUnavailable: the
// order service while the user service is down) is alive; its callers'
// breakers do not open on it, however many such answers come in a row,
// and the answer reaches the caller as it was sent. A plain UNAVAILABLE
// from the same server still counts.
func TestDependencyUnavailableDoesNotTripTheBreaker(t *testing.T) {
	t.Parallel()
	var plain atomic.Bool
	addr, _, _ := serve(t, &fakeUsers{getUser: func(context.Context, *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
		if plain.Load() {
			return nil, apperr.Unavailable("down")
		}
		return nil, apperr.DependencyUnavailable("ledger", "cannot answer now: the ledger is unavailable")
	}}, mesh.ServerConfig{})
	c := dialMesh(t, addr, mesh.ClientConfig{Breaker: mesh.BreakerConfig{Timeout: time.Minute}})
	for range 20 {
		_, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID})
		if !apperr.IsDependencyUnavailable(err) || !strings.Contains(err.Error(), "the ledger is unavailable") {
			t.Fatalf("got %v, want the upstream's own DEPENDENCY_UNAVAILABLE answer (the breaker must stay closed)", err)
		}
	}
	plain.Store(true)
	for range 3 {
		if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}); status.Code(err) != codes.Unavailable || apperr.IsDependencyUnavailable(err) {
			t.Fatalf("got %v, want a plain Unavailable", err)
		}
	}
	if _, err := c.GetUser(context.Background(), &userv1.GetUserRequest{Id: validID}); !strings.Contains(err.Error(), "circuit breaker open") {
		t.Fatalf("after 3 plain UNAVAILABLE answers: got %v, want the open breaker", err)
	}
}

// TestMalformedProtobufIsInvalidArgument sends bytes that are not a valid
// GetUserRequest; the answer is INVALID_ARGUMENT from the mesh chain (with
// the request id trailer), never INTERNAL with the parser's text.
func TestMalformedProtobufIsInvalidArgument(t *testing.T) {
	t.Parallel()
	addr, called := serveRecorder(t)
	conn := testenv.Dial(t, addr)
	for name, body := range map[string][]byte{
		"truncated varint":    {0x08},
		"wrong wire type":     {0x0d, 1, 2, 3, 4}, // field 1 (a string) as fixed32
		"string not UTF-8":    {0x0a, 2, 0xff, 0xfe},
		"length past the end": {0x0a, 100, 'a'},
		"group never closed":  {0x0b},
		"field number zero":   {0x02, 0},
	} {
		var out []byte
		var trailer metadata.MD
		err := conn.Invoke(context.Background(), "/trellis.user.v1.UserService/GetUser", &body, &out, grpc.ForceCodecV2(testenv.RawCodec{}), grpc.Trailer(&trailer))
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
			continue
		}
		if strings.Contains(err.Error(), "proto:") || strings.Contains(err.Error(), "grpc:") {
			t.Errorf("%s: parser text reached the client: %v", name, err)
		}
		if len(trailer.Get(mesh.RequestIDHeader)) == 0 {
			t.Errorf("%s: no request id trailer: the answer did not come from the mesh chain", name)
		}
	}
	if called.Load() {
		t.Error("handler ran for a malformed request")
	}
}
