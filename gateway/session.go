package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
)

// Browser sessions. A page cannot keep a refresh token where script
// cannot read it, so the gateway keeps it for the page: a sign-in or
// refresh that carries SessionHeader answers with the refresh token in
// an HttpOnly, SameSite=Strict cookie scoped to /api/v1 (and not in the
// body), and a refresh or sign-out with SessionHeader reads the token
// from that cookie. The access token stays in the page's memory only; a
// reload gets a new one by refreshing. Without the header, the API is the
// plain token API that curl and SDKs use.
const (
	// SessionHeader asks for the cookie form ("1").
	SessionHeader = "X-Session-Cookie"
	// SessionCookie holds the refresh token.
	SessionCookie = "trellis_refresh"
	sessionPath   = "/api/v1/auth"
	// cookiePath is where the browser sends the cookie: a cookie path
	// matches only at a "/" boundary, and the routes are
	// /api/v1/auth:refresh and /api/v1/auth:signOut. Other routes ignore
	// it.
	cookiePath = "/api/v1"
	// sessionMaxAge is how long the browser keeps the cookie; the token
	// in it expires on the server's terms (--refresh-token-ttl).
	sessionMaxAge = 30 * 24 * time.Hour
)

type sessionKey struct{}

// sessionMode is set on requests that asked for the cookie form.
type sessionMode struct{ secure bool }

func sessionFrom(ctx context.Context) *sessionMode {
	s, _ := ctx.Value(sessionKey{}).(*sessionMode)
	return s
}

// session turns a cookie-form request into the plain API's: the refresh
// token from the cookie goes into the body the AuthService expects.
func (g *Gateway) session(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, sessionPath+":") || r.Header.Get(SessionHeader) != "1" {
			next.ServeHTTP(w, r)
			return
		}
		mode := &sessionMode{secure: r.TLS != nil}
		switch r.URL.Path {
		case sessionPath + ":refresh", sessionPath + ":signOut":
			tok := ""
			if c, err := r.Cookie(SessionCookie); err == nil {
				tok = c.Value
			}
			if tok == "" && r.URL.Path == sessionPath+":refresh" {
				w.Header().Set("WWW-Authenticate", challenge)
				g.writeStatus(w, http.StatusUnauthorized, status.New(codes.Unauthenticated, "no session: sign in"))
				return
			}
			body, _ := json.Marshal(map[string]string{"refreshToken": tok})
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
			r.Header.Set("Content-Type", "application/json")
			if r.URL.Path == sessionPath+":signOut" {
				setSessionCookie(w, "", mode.secure) // signed out whatever the answer
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, mode)))
	})
}

// setSessionCookie sets the refresh cookie, or clears it for "".
func setSessionCookie(w http.ResponseWriter, token string, secure bool) {
	c := &http.Cookie{Name: SessionCookie, Value: token, Path: cookiePath, HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: secure, MaxAge: int(sessionMaxAge.Seconds())}
	if token == "" {
		c.MaxAge = -1
	}
	http.SetCookie(w, c)
}

// sessionResponse moves a new refresh token from the body into the cookie
// for cookie-form requests (a grpc-gateway forward-response option: it
// runs before the message is written).
func sessionResponse(ctx context.Context, w http.ResponseWriter, m interface{ GetRefreshToken() string }) {
	mode := sessionFrom(ctx)
	if mode == nil {
		return
	}
	setSessionCookie(w, m.GetRefreshToken(), mode.secure)
	switch m := m.(type) {
	case *userv1.SignInResponse:
		m.RefreshToken = ""
	case *userv1.RefreshTokenResponse:
		m.RefreshToken = ""
	}
}
