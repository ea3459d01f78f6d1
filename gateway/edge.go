package gateway

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/apperr"
)

// limitedBody notes when a body went over the limit, so the error handler
// can answer 413 instead of a decoding error.
type limitedBody struct {
	io.ReadCloser
	exceeded bool
}

func (l *limitedBody) Read(p []byte) (int, error) {
	n, err := l.ReadCloser.Read(p)
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		l.exceeded = true
	}
	return n, err
}

type limitKey struct{}

// limitBody refuses bodies over MaxBodyBytes: at once when Content-Length
// says so, else when reading crosses the limit.
func (g *Gateway) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > g.cfg.MaxBodyBytes {
			g.writeStatus(w, http.StatusRequestEntityTooLarge, status.Newf(codes.InvalidArgument, "request body is larger than %d bytes", g.cfg.MaxBodyBytes))
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			lb := &limitedBody{ReadCloser: http.MaxBytesReader(w, r.Body, g.cfg.MaxBodyBytes)}
			r = r.WithContext(context.WithValue(r.Context(), limitKey{}, lb))
			r.Body = lb
		}
		next.ServeHTTP(w, r)
	})
}

func bodyTooLarge(r *http.Request) bool {
	lb, _ := r.Context().Value(limitKey{}).(*limitedBody)
	return lb != nil && lb.exceeded
}

// apiEdge checks what every API request carries before any route sees it:
//   - the path and every query parameter are valid UTF-8 (protobuf strings
//     must be; an invalid one is the client's mistake, answered 400 naming
//     the parameter, never sent upstream);
//   - a request with a body says it is JSON (415 otherwise): a browser
//     form cannot send application/json across origins without a CORS
//     preflight, so this is also the CSRF defence;
//   - and sends it as it is: a Content-Encoding other than identity (a
//     gzip body, say) is 415 with Accept-Encoding: identity (RFC 9110
//     15.5.16), not a JSON error about its first compressed byte;
//   - HEAD is served as GET without the body.
func (g *Gateway) apiEdge(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !utf8.ValidString(r.URL.Path) {
			g.writeStatus(w, http.StatusBadRequest, badParam("path", "the path is not valid UTF-8 once percent-decoded"))
			return
		}
		query, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			g.writeStatus(w, http.StatusBadRequest, badParam("query", "the query string is not valid percent-encoding"))
			return
		}
		for k, vs := range query {
			if !utf8.ValidString(k) {
				g.writeStatus(w, http.StatusBadRequest, badParam("query", "a query parameter name is not valid UTF-8"))
				return
			}
			for _, v := range vs {
				if !utf8.ValidString(v) {
					g.writeStatus(w, http.StatusBadRequest, badParam(k, "not valid UTF-8 once percent-decoded"))
					return
				}
			}
		}
		switch r.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch:
			ct := r.Header.Get("Content-Type")
			hasBody := r.ContentLength != 0
			if ct == "" && !hasBody {
				break
			}
			if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
				g.writeStatus(w, http.StatusUnsupportedMediaType, status.New(codes.InvalidArgument, "request bodies must be JSON: send Content-Type: application/json"))
				return
			}
			if !identityEncoded(r.Header.Values("Content-Encoding")) {
				w.Header().Set("Accept-Encoding", "identity")
				g.writeStatus(w, http.StatusUnsupportedMediaType, status.New(codes.InvalidArgument, "request bodies are not decompressed: send the JSON as it is, without Content-Encoding"))
				return
			}
		case http.MethodHead:
			r = r.Clone(r.Context())
			r.Method = http.MethodGet // net/http sends no body for HEAD
		}
		next.ServeHTTP(w, r)
	})
}

// identityEncoded reports whether Content-Encoding header values (a list:
// "gzip, br", or several lines) name no coding but identity.
func identityEncoded(values []string) bool {
	for _, v := range values {
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
				return false
			}
		}
	}
	return true
}

// badParam is the INVALID_ARGUMENT of one bad request parameter, in the
// same shape as the services' field violations.
func badParam(field, desc string) *status.Status {
	return apperr.InvalidArgument([]*errdetails.BadRequest_FieldViolation{{Field: field, Description: desc}})
}

// noDirectoryListing answers 404 for directories: the file server would
// list their contents.
func noDirectoryListing(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}
