package user_test

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/quota"
	"github.com/trellis-mesh/trellis/internal/sqldb"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/token"
	"github.com/trellis-mesh/trellis/services/user"
)

// clock is a settable time shared by the service and its verifier.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// authStack is the user service with sign-in, served through the mesh
// server; its verifier finds the keys as another component does: the key
// set fetched with GetJwks over gRPC.
type authStack struct {
	svc   *user.Service
	users userv1.UserServiceClient
	auth  userv1.AuthServiceClient
	clock *clock
}

func startAuth(t *testing.T, backend sqldb.Dialect, cost int) *authStack {
	t.Helper()
	store, err := user.NewSQLStore(context.Background(), testenv.OpenDB(t, backend, "user"))
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{}
	c.ns.Store(time.Now().UnixNano())
	svc := user.NewService(store, user.Config{BcryptCost: cost, Now: c.now,
		Auth: user.AuthConfig{AccessTTL: 5 * time.Minute, RefreshTTL: time.Hour, KeyRotation: time.Hour}})
	var auth userv1.AuthServiceClient
	keys := token.NewKeySet(func(ctx context.Context) ([]jose.JSONWebKey, error) {
		return user.FetchJWKS(auth)(ctx) // auth is set below, before any call
	}, 10*time.Millisecond, time.Hour)
	m, _ := testenv.Metrics()
	srv := mesh.NewServer(mesh.ServerConfig{Auth: mesh.Authentication{
		Tokens: &token.Verifier{Issuer: token.DefaultIssuer, Audience: token.DefaultAudience, Keys: keys, Now: c.now, Cache: token.NewCache(100)},
		Public: user.PublicMethods,
	}}, testenv.Logger(), m)
	srv.Register(&userv1.UserService_ServiceDesc, user.NewGRPC(svc), user.Validate)
	srv.Register(&userv1.AuthService_ServiceDesc, user.NewAuthGRPC(svc), user.Validate)
	conn := testenv.Dial(t, testenv.Serve(t, srv))
	auth = userv1.NewAuthServiceClient(conn)
	return &authStack{svc: svc, users: userv1.NewUserServiceClient(conn), auth: auth, clock: c}
}

func (s *authStack) signUp(t *testing.T) (email, id string) {
	t.Helper()
	email = "a" + uuid.NewString()[:8] + "@example.com"
	u, err := s.users.CreateUser(context.Background(), &userv1.CreateUserRequest{Email: email, Name: "Ada", Password: "correct-horse"})
	if err != nil {
		t.Fatal(err)
	}
	return email, u.GetUser().GetId()
}

func (s *authStack) signIn(t *testing.T, email string) *userv1.SignInResponse {
	t.Helper()
	r, err := s.auth.SignIn(context.Background(), &userv1.SignInRequest{Email: email, Password: "correct-horse"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (s *authStack) getSelf(id, access string) error {
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+access)
	_, err := s.users.GetUser(ctx, &userv1.GetUserRequest{Id: id})
	return err
}

func (s *authStack) refresh(rt string) (*userv1.RefreshTokenResponse, error) {
	return s.auth.RefreshToken(context.Background(), &userv1.RefreshTokenRequest{RefreshToken: rt})
}

// TestRefreshRotatesAndReuseRevokesTheSignIn on both backends: each
// refresh token works once; showing a used one again (it was stolen)
// revokes every token of that sign-in, the thief's and the owner's; other
// sign-ins are untouched; sign-out ends a sign-in.
func TestRefreshRotatesAndReuseRevokesTheSignIn(t *testing.T) {
	t.Parallel()
	for _, backend := range testenv.Backends {
		t.Run(string(backend), func(t *testing.T) {
			t.Parallel()
			s := startAuth(t, backend, 4)
			email, id := s.signUp(t)
			first := s.signIn(t, email)
			other := s.signIn(t, email) // another device
			if first.GetUserId() != id || first.GetTokenType() != "Bearer" || first.GetExpiresIn() != 300 {
				t.Fatalf("sign-in answer %v", first)
			}
			if err := s.getSelf(id, first.GetAccessToken()); err != nil {
				t.Fatalf("access token: %v", err)
			}
			second, err := s.refresh(first.GetRefreshToken())
			if err != nil || second.GetRefreshToken() == first.GetRefreshToken() {
				t.Fatalf("refresh: %v (new token %v)", err, second.GetRefreshToken() != first.GetRefreshToken())
			}
			if err := s.getSelf(id, second.GetAccessToken()); err != nil {
				t.Fatalf("refreshed access token: %v", err)
			}
			// Reuse of the first: refused, and the whole family with it.
			if _, err := s.refresh(first.GetRefreshToken()); status.Code(err) != codes.Unauthenticated {
				t.Fatalf("reused refresh token: %v, want UNAUTHENTICATED", err)
			}
			if _, err := s.refresh(second.GetRefreshToken()); status.Code(err) != codes.Unauthenticated {
				t.Fatalf("the family's newest token after a reuse: %v, want UNAUTHENTICATED", err)
			}
			// The other device's sign-in is its own family.
			next, err := s.refresh(other.GetRefreshToken())
			if err != nil {
				t.Fatalf("another sign-in after the reuse: %v", err)
			}
			if _, err := s.auth.SignOut(context.Background(), &userv1.SignOutRequest{RefreshToken: next.GetRefreshToken()}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.refresh(next.GetRefreshToken()); status.Code(err) != codes.Unauthenticated {
				t.Fatalf("after sign-out: %v, want UNAUTHENTICATED", err)
			}
			if _, err := s.auth.SignOut(context.Background(), &userv1.SignOutRequest{RefreshToken: "never-issued"}); err != nil {
				t.Fatalf("sign-out of an unknown token: %v, want OK (idempotent)", err)
			}
		})
	}
}

// TestConcurrentRefreshesOfOneToken: of 10 concurrent exchanges of one
// refresh token exactly one succeeds (the store's conditional update), and
// the others, being reuses, revoke the family.
func TestConcurrentRefreshesOfOneToken(t *testing.T) {
	t.Parallel()
	for _, backend := range testenv.Backends {
		t.Run(string(backend), func(t *testing.T) {
			t.Parallel()
			s := startAuth(t, backend, 4)
			email, _ := s.signUp(t)
			in := s.signIn(t, email)
			var wg sync.WaitGroup
			var ok atomic.Int32
			var winner atomic.Value
			for range 10 {
				wg.Go(func() {
					r, err := s.refresh(in.GetRefreshToken())
					switch status.Code(err) {
					case codes.OK:
						ok.Add(1)
						winner.Store(r.GetRefreshToken())
					case codes.Unauthenticated:
					default:
						t.Errorf("refresh: %v", err)
					}
				})
			}
			wg.Wait()
			if ok.Load() != 1 {
				t.Fatalf("%d refreshes succeeded, want exactly 1", ok.Load())
			}
			if _, err := s.refresh(winner.Load().(string)); status.Code(err) != codes.Unauthenticated {
				t.Fatalf("the winner's token after the reuses: %v, want UNAUTHENTICATED", err)
			}
		})
	}
}

// TestTokensExpire: an access token is refused past its expiry and the
// leeway; a refresh token past its lifetime; a deleted user's refresh
// token at once.
func TestTokensExpire(t *testing.T) {
	t.Parallel()
	s := startAuth(t, sqldb.SQLite, 4)
	email, id := s.signUp(t)
	in := s.signIn(t, email)
	s.clock.advance(5*time.Minute + 20*time.Second) // expired, within the 30 s leeway
	if err := s.getSelf(id, in.GetAccessToken()); err != nil {
		t.Fatalf("within the clock-skew leeway: %v", err)
	}
	s.clock.advance(20 * time.Second)
	if err := s.getSelf(id, in.GetAccessToken()); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("expired access token: %v, want UNAUTHENTICATED", err)
	}
	fresh, err := s.refresh(in.GetRefreshToken())
	if err != nil {
		t.Fatalf("refresh after the access token expired: %v", err)
	}
	s.clock.advance(time.Hour + time.Second)
	if _, err := s.refresh(fresh.GetRefreshToken()); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("expired refresh token: %v, want UNAUTHENTICATED", err)
	}
	email2, id2 := s.signUp(t)
	in2 := s.signIn(t, email2)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+in2.GetAccessToken())
	if _, err := s.users.DeleteUser(ctx, &userv1.DeleteUserRequest{Id: id2}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.refresh(in2.GetRefreshToken()); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a deleted user's refresh token: %v, want UNAUTHENTICATED", err)
	}
}

// TestKeyRotationWhileCallsAreInFlight: calls with tokens from before and
// after five key rotations keep succeeding; the verifier, which knows keys
// only from the published set, picks up each new key when a token names
// it. Zero failures.
func TestKeyRotationWhileCallsAreInFlight(t *testing.T) {
	t.Parallel()
	s := startAuth(t, sqldb.SQLite, 4)
	email, id := s.signUp(t)
	s.signIn(t, email) // the first key exists before the rotations start
	var calls, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			tok := s.signIn(t, email).GetAccessToken()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if i%10 == 9 { // now and then a token signed by the newest key
					tok = s.signIn(t, email).GetAccessToken()
				}
				calls.Add(1)
				if err := s.getSelf(id, tok); err != nil {
					failed.Add(1)
					t.Errorf("call during rotation: %v", err)
				}
			}
		})
	}
	for range 5 {
		time.Sleep(60 * time.Millisecond)
		if err := s.svc.RotateSigningKey(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(60 * time.Millisecond)
	close(stop)
	wg.Wait()
	jwks, err := s.auth.GetJwks(context.Background(), &userv1.GetJwksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d calls, %d failed, across 5 rotations; %d keys published", calls.Load(), failed.Load(), len(jwks.GetKeys()))
	if len(jwks.GetKeys()) != 6 {
		t.Errorf("%d keys published, want 6 (the first and five rotations: none has expired tokens yet)", len(jwks.GetKeys()))
	}
}

// TestSignInDoesNotTellWhichPartWasWrong: an unknown email and a wrong
// password get the same answer in the same time (bcrypt at cost 8, so
// that the comparison is the time; medians of interleaved attempts).
func TestSignInDoesNotTellWhichPartWasWrong(t *testing.T) {
	t.Parallel()
	s := startAuth(t, sqldb.SQLite, 8)
	email, _ := s.signUp(t)
	try := func(email, pw string) (time.Duration, *status.Status) {
		start := time.Now()
		_, err := s.auth.SignIn(context.Background(), &userv1.SignInRequest{Email: email, Password: pw})
		return time.Since(start), status.Convert(err)
	}
	var known, unknown []time.Duration
	for range 7 {
		d1, st1 := try(email, "wrong-password")
		d2, st2 := try("nobody-"+uuid.NewString()[:6]+"@example.com", "wrong-password")
		if st1.Code() != codes.Unauthenticated || st1.Code() != st2.Code() || st1.Message() != st2.Message() {
			t.Fatalf("wrong password %v %q, unknown email %v %q: want the same answer", st1.Code(), st1.Message(), st2.Code(), st2.Message())
		}
		known, unknown = append(known, d1), append(unknown, d2)
	}
	med := func(ds []time.Duration) time.Duration {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2]
	}
	ratio := float64(med(unknown)) / float64(med(known))
	t.Logf("median sign-in time: wrong password %v, unknown email %v (ratio %.2f)", med(known), med(unknown), ratio)
	// Without the dummy comparison an unknown email answers ~100x faster.
	if ratio < 0.6 || ratio > 1.6 {
		t.Errorf("an unknown email takes %.2fx the time of a wrong password: the time tells them apart", ratio)
	}
}

// TestFailedSignInsAreLimitedPerAccount: past the quota of failures an
// account refuses attempts — the right password too — with
// RESOURCE_EXHAUSTED and a retry delay, for known and unknown emails
// alike; other accounts are not affected; successes do not count.
func TestFailedSignInsAreLimitedPerAccount(t *testing.T) {
	t.Parallel()
	store, err := user.NewSQLStore(context.Background(), testenv.OpenDB(t, sqldb.SQLite, "user"))
	if err != nil {
		t.Fatal(err)
	}
	svc := user.NewService(store, user.Config{BcryptCost: 4, Auth: user.AuthConfig{SignInQuota: quota.Quota{N: 3, Per: time.Hour}}})
	ctx := context.Background()
	for _, e := range []string{"victim@example.com", "bystander@example.com"} {
		if _, err := svc.Create(ctx, e, "V", "correct-horse"); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 { // successes take nothing from the quota
		if _, err := svc.SignIn(ctx, "victim@example.com", "correct-horse"); err != nil {
			t.Fatal(err)
		}
	}
	for _, email := range []string{"victim@example.com", "nobody@example.com"} {
		for i := range 3 {
			if _, err := svc.SignIn(ctx, email, "wrong-password"); status.Code(err) != codes.Unauthenticated {
				t.Fatalf("%s failure %d: %v, want UNAUTHENTICATED", email, i, err)
			}
		}
		_, err := svc.SignIn(ctx, email, "correct-horse")
		st := status.Convert(err)
		if st.Code() != codes.ResourceExhausted || len(st.Details()) != 1 {
			t.Fatalf("%s past the quota: %v, want RESOURCE_EXHAUSTED with RetryInfo", email, err)
		}
		if ri, ok := st.Details()[0].(*errdetails.RetryInfo); !ok || ri.GetRetryDelay().AsDuration() < time.Second {
			t.Fatalf("retry info %v", st.Details())
		}
	}
	if _, err := svc.SignIn(ctx, "bystander@example.com", "correct-horse"); err != nil {
		t.Fatalf("another account: %v", err)
	}
}
