package user

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/sqldb"
)

// SigningKey is one ES256 key of the access tokens.
type SigningKey struct {
	KID        string
	Key        *ecdsa.PrivateKey
	CreateTime time.Time
}

// RefreshToken is the stored side of a refresh token: its hash, never
// the token.
type RefreshToken struct {
	Hash       string
	FamilyID   string
	UserID     string
	ExpireTime time.Time
}

// Errors of refresh tokens.
var (
	// ErrTokenReused: a refresh token that was already exchanged (or
	// revoked) came back; its family is revoked.
	ErrTokenReused = errors.New("refresh token reused")
)

// AuthStore keeps what sign-in needs besides users.
type AuthStore interface {
	// GetByEmail returns the user whose email key is key.
	GetByEmail(ctx context.Context, key string) (User, error)
	// SetRoles replaces the roles of the user with the given email key.
	SetRoles(ctx context.Context, key string, roles []string) (User, error)
	SigningKeys(ctx context.Context) ([]SigningKey, error)
	// AddSigningKey stores k and removes the keys created before
	// retireBefore.
	AddSigningKey(ctx context.Context, k SigningKey, retireBefore time.Time) error
	AddRefreshToken(ctx context.Context, t RefreshToken) error
	// UseRefreshToken marks the token with hash used and returns it, if it
	// is unused and unexpired at now; ErrTokenReused (after revoking its
	// family) if it was used; ErrNotFound if unknown or expired.
	UseRefreshToken(ctx context.Context, hash string, now time.Time) (RefreshToken, error)
	// RevokeFamily makes every token of the family of the token with hash
	// unusable; unknown hashes are not an error.
	RevokeFamily(ctx context.Context, hash string) error
}

// GetByEmail returns the user with the email key.
func (s *SQLStore) GetByEmail(ctx context.Context, key string) (User, error) {
	u, err := scanUser(s.db.QueryRowContext(ctx, "SELECT "+userColumns+" FROM users WHERE email_key = $1", key))
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, ErrNotFound
	}
	return u, err
}

// SetRoles sets the roles of the user with the email key. Roles are not
// part of the user's events: no other service reads them.
func (s *SQLStore) SetRoles(ctx context.Context, key string, roles []string) (User, error) {
	res, err := s.db.ExecContext(ctx, "UPDATE users SET roles = $1 WHERE email_key = $2", strings.Join(roles, ","), key)
	if err := sqldb.AffectedOne(res, err, ErrNotFound); err != nil {
		return User{}, err
	}
	return s.GetByEmail(ctx, key)
}

// SigningKeys returns the stored keys, newest first.
func (s *SQLStore) SigningKeys(ctx context.Context) ([]SigningKey, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT kid, private_key, create_time FROM signing_keys ORDER BY create_time DESC, kid")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []SigningKey
	for rows.Next() {
		var kid, der64 string
		var created int64
		if err := rows.Scan(&kid, &der64, &created); err != nil {
			return nil, err
		}
		der, err := base64.StdEncoding.DecodeString(der64)
		if err != nil {
			return nil, fmt.Errorf("signing key %s: %w", kid, err)
		}
		k, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return nil, fmt.Errorf("signing key %s: %w", kid, err)
		}
		ec, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("signing key %s is not an EC key", kid)
		}
		out = append(out, SigningKey{KID: kid, Key: ec, CreateTime: time.UnixMicro(created).UTC()})
	}
	return out, rows.Err()
}

// AddSigningKey stores k and drops retired keys.
func (s *SQLStore) AddSigningKey(ctx context.Context, k SigningKey, retireBefore time.Time) error {
	der, err := x509.MarshalPKCS8PrivateKey(k.Key)
	if err != nil {
		return err
	}
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO signing_keys (kid, private_key, create_time) VALUES ($1, $2, $3)",
			k.KID, base64.StdEncoding.EncodeToString(der), k.CreateTime.UnixMicro()); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "DELETE FROM signing_keys WHERE create_time < $1", retireBefore.UnixMicro())
		return err
	})
}

// AddRefreshToken stores a token's hash; expired tokens of the same user
// are swept on the way, so the table holds live tokens only.
func (s *SQLStore) AddRefreshToken(ctx context.Context, t RefreshToken) error {
	return s.db.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "DELETE FROM refresh_tokens WHERE user_id = $1 AND expire_time < $2",
			t.UserID, time.Now().UnixMicro()); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expire_time) VALUES ($1, $2, $3, $4)",
			t.Hash, t.FamilyID, t.UserID, t.ExpireTime.UnixMicro())
		return err
	})
}

// UseRefreshToken marks the token used in one conditional UPDATE, so that
// of two concurrent exchanges of one token exactly one wins and the other
// is a reuse.
func (s *SQLStore) UseRefreshToken(ctx context.Context, hash string, now time.Time) (RefreshToken, error) {
	var t RefreshToken
	err := s.db.InTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE refresh_tokens SET used = 1 WHERE token_hash = $1 AND used = 0 AND expire_time > $2", hash, now.UnixMicro())
		if err := sqldb.AffectedOne(res, err, ErrNotFound); err == nil {
			var exp int64
			if err := tx.QueryRowContext(ctx, "SELECT token_hash, family_id, user_id, expire_time FROM refresh_tokens WHERE token_hash = $1", hash).
				Scan(&t.Hash, &t.FamilyID, &t.UserID, &exp); err != nil {
				return err
			}
			t.ExpireTime = time.UnixMicro(exp).UTC()
			return nil
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		var used int
		var exp int64
		switch err := tx.QueryRowContext(ctx, "SELECT used, expire_time FROM refresh_tokens WHERE token_hash = $1", hash).Scan(&used, &exp); {
		case errors.Is(err, sql.ErrNoRows):
			return ErrNotFound
		case err != nil:
			return err
		case used == 0: // expired, never used
			return ErrNotFound
		}
		return ErrTokenReused
	})
	if errors.Is(err, ErrTokenReused) {
		if rerr := s.RevokeFamily(ctx, hash); rerr != nil {
			return RefreshToken{}, rerr
		}
	}
	return t, err
}

// RevokeFamily marks the whole family of the token used.
func (s *SQLStore) RevokeFamily(ctx context.Context, hash string) error {
	_, err := s.db.ExecContext(ctx,
		"UPDATE refresh_tokens SET used = 1 WHERE family_id IN (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)", hash)
	return err
}
