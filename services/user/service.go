package user

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/google/uuid"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/trellis-mesh/trellis/gen/trellis/events/v1"
	"github.com/trellis-mesh/trellis/internal/apperr"
	"github.com/trellis-mesh/trellis/internal/etag"
	"github.com/trellis-mesh/trellis/internal/event"
	"github.com/trellis-mesh/trellis/internal/pagetoken"
	"github.com/trellis-mesh/trellis/internal/validate"
	"github.com/trellis-mesh/trellis/mesh"
	"github.com/trellis-mesh/trellis/mesh/token"
)

// Config tunes the user service.
type Config struct {
	// BcryptCost is the password hashing cost; 0 means bcrypt.DefaultCost.
	// Tests lower it; production should not.
	BcryptCost int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Committed is called after a change and its event committed (the
	// outbox relay's Notify); nil means nobody is told.
	Committed func()
	// Auth tunes sign-in and tokens.
	Auth AuthConfig
}

// RegisterFlags defines bcrypt-cost, prefixed.
func (c *Config) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.IntVar(&c.BcryptCost, prefix+"bcrypt-cost", bcrypt.DefaultCost, "bcrypt cost of password hashes (4-31)")
	c.Auth.RegisterFlags(prefix, fs)
}

// Validate reports settings that cannot work.
func (c *Config) Validate() error {
	if c.BcryptCost < bcrypt.MinCost || c.BcryptCost > bcrypt.MaxCost {
		return fmt.Errorf("--bcrypt-cost must be between %d and %d", bcrypt.MinCost, bcrypt.MaxCost)
	}
	return c.Auth.Validate()
}

// Service holds the user use cases. Requests reach it already validated by
// Validate (the mesh server runs it first).
type Service struct {
	store     Store
	cost      int
	now       func() time.Time
	committed func()
	auth      AuthConfig
	keys      *keyring
	dummy     []byte // see dummyHash
	signIns   *signInLimiter
}

// NewService returns the user service over store.
func NewService(store Store, cfg Config) *Service {
	if cfg.BcryptCost == 0 {
		cfg.BcryptCost = bcrypt.DefaultCost
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Committed == nil {
		cfg.Committed = func() {}
	}
	auth := cfg.Auth.withDefaults()
	limiter, err := newSignInLimiter(auth)
	if err != nil {
		panic(fmt.Sprintf("user: sign-in limit %v: %v", auth.SignInQuota, err)) // validated quotas always build
	}
	return &Service{signIns: limiter, store: store, cost: cfg.BcryptCost, now: cfg.Now, committed: cfg.Committed, auth: auth, dummy: dummyHash(cfg.BcryptCost),
		keys: &keyring{store: store, rotation: auth.KeyRotation, keep: auth.AccessTTL + token.DefaultLeeway + time.Minute, now: cfg.Now}}
}

func (s *Service) timestamp() time.Time { return s.now().UTC().Truncate(time.Microsecond) }

// normalize returns the stored forms of email, name and password (see
// NormalizeEmail); requests reach here validated, so a refusal is a bug
// in the validator, reported as a bad argument all the same.
func normalize(email, name, password *string) error {
	for _, f := range []struct {
		field string
		v     *string
		fn    func(string) (string, error)
	}{{"email", email, NormalizeEmail}, {"name", name, NormalizeName}, {"password", password, NormalizePassword}} {
		if f.v == nil {
			continue
		}
		n, err := f.fn(*f.v)
		if err != nil {
			return apperr.Invalid(apperr.Violation(f.field, validate.Unprintable))
		}
		*f.v = n
	}
	return nil
}

// Create registers a user with a bcrypt hash of password. Email, name and
// password are stored (hashed) in their PRECIS-normalised forms.
func (s *Service) Create(ctx context.Context, email, name, password string) (User, error) {
	if err := normalize(&email, &name, &password); err != nil {
		return User{}, err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), s.cost)
	if err != nil {
		return User{}, fmt.Errorf("hash password: %w", err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return User{}, err
	}
	now := s.timestamp()
	u := User{ID: id.String(), Email: email, Name: name, PasswordHash: string(hash), CreateTime: now, UpdateTime: now, Version: 1}
	ev, err := event.New(mesh.TraceParent(ctx), SubjectCreated, EventSource, u.ID, &eventsv1.UserCreated{
		UserId: u.ID, Email: u.Email, Name: u.Name, CreateTime: timestamppb.New(now)}, now)
	if err != nil {
		return User{}, err
	}
	if err := s.store.Create(ctx, u, ev); err != nil {
		if errors.Is(err, ErrEmailTaken) {
			// No address in the text: messages reach access logs.
			return User{}, apperr.AlreadyExists("a user with this email already exists")
		}
		return User{}, fmt.Errorf("create user: %w", err)
	}
	s.committed()
	return u, nil
}

// Get returns one user: to the user, an admin, or a trusted workload (the
// order service checking a user on its own account).
func (s *Service) Get(ctx context.Context, id string) (User, error) {
	if p := mesh.PrincipalFrom(ctx); !mayAccess(p, id) && (p == nil || p.Workload == "") {
		return User{}, apperr.NotFound("user %q not found", id)
	}
	u, err := s.store.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return User{}, apperr.NotFound("user %q not found", id)
	}
	return u, err
}

// BatchGet returns the users in the order of ids; any missing id fails the
// whole call, naming the first one missing.
func (s *Service) BatchGet(ctx context.Context, ids []string) ([]User, error) {
	if p := mesh.PrincipalFrom(ctx); p == nil || p.Workload == "" {
		for _, id := range ids {
			if !mayAccess(p, id) {
				return nil, apperr.NotFound("user %q not found", id)
			}
		}
	}
	found, err := s.store.GetMany(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("batch get users: %w", err)
	}
	byID := make(map[string]User, len(found))
	for _, u := range found {
		byID[u.ID] = u
	}
	out := make([]User, len(ids))
	for i, id := range ids {
		u, ok := byID[id]
		if !ok {
			return nil, apperr.NotFound("user %q not found", id)
		}
		out[i] = u
	}
	return out, nil
}

// List returns one page of users and the token of the next page ("" at
// the end).
func (s *Service) List(ctx context.Context, pageSize int32, token string) ([]User, string, error) {
	if !mesh.PrincipalFrom(ctx).Admin() {
		return nil, "", apperr.PermissionDenied("listing users needs the admin role")
	}
	after, err := pagetoken.Decode(token, "users")
	if err != nil {
		return nil, "", apperr.Invalid(apperr.Violation("page_token", "not a token returned by ListUsers"))
	}
	size := pagetoken.Size(pageSize, DefaultPage, MaxPage)
	users, err := s.store.List(ctx, after, size+1) // one extra says whether a next page exists
	if err != nil {
		return nil, "", fmt.Errorf("list users: %w", err)
	}
	page, next := pagetoken.Page(users, size, "users",
		func(u User) int { return 120 + len(u.Email) + len(u.Name) }, // about its wire size
		func(u User) string { return u.ID })
	return page, next, nil
}

// Patch names the fields an update changes; nil fields are kept.
type Patch struct {
	Email *string
	Name  *string
}

// Update applies patch to the user and returns the result. Only the
// patched fields are written, atomically; with a non-empty etag only if it
// is still the user's (ABORTED otherwise).
func (s *Service) Update(ctx context.Context, id string, patch Patch, tag string) (User, error) {
	if !mayAccess(mesh.PrincipalFrom(ctx), id) {
		return User{}, apperr.NotFound("user %q not found", id)
	}
	if err := normalize(patch.Email, patch.Name, nil); err != nil {
		return User{}, err
	}
	ifVersion, err := etag.Condition(tag)
	if err != nil {
		return User{}, err
	}
	u, err := s.store.Update(ctx, id, patch, ifVersion, s.timestamp(), func(u User) (event.Event, error) {
		return event.New(mesh.TraceParent(ctx), SubjectUpdated, EventSource, u.ID, &eventsv1.UserUpdated{
			UserId: u.ID, Email: u.Email, Name: u.Name, UpdateTime: timestamppb.New(u.UpdateTime)}, u.UpdateTime)
	})
	switch {
	case errors.Is(err, ErrNotFound):
		return User{}, apperr.NotFound("user %q not found", id)
	case errors.Is(err, ErrStale):
		return User{}, apperr.Aborted("user %q was changed since its etag was read; read it again", id)
	case errors.Is(err, ErrEmailTaken):
		return User{}, apperr.AlreadyExists("a user with this email already exists")
	case err != nil:
		return User{}, fmt.Errorf("update user: %w", err)
	}
	s.committed()
	return u, nil
}

// Delete removes a user; with a non-empty etag only if it is still the
// user's.
func (s *Service) Delete(ctx context.Context, id, tag string) error {
	if !mayAccess(mesh.PrincipalFrom(ctx), id) {
		return apperr.NotFound("user %q not found", id)
	}
	ifVersion, err := etag.Condition(tag)
	if err != nil {
		return err
	}
	now := s.timestamp()
	ev, err := event.New(mesh.TraceParent(ctx), SubjectDeleted, EventSource, id, &eventsv1.UserDeleted{UserId: id, DeleteTime: timestamppb.New(now)}, now)
	if err != nil {
		return err
	}
	switch err := s.store.Delete(ctx, id, ifVersion, ev); {
	case errors.Is(err, ErrNotFound):
		return apperr.NotFound("user %q not found", id)
	case errors.Is(err, ErrStale):
		return apperr.Aborted("user %q was changed since its etag was read; read it again", id)
	case err != nil:
		return fmt.Errorf("delete user: %w", err)
	}
	s.committed()
	return nil
}
