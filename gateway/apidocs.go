package gateway

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
)

// The API reference page: Redoc, from the npm package pinned in
// gateway/apidocs/package-lock.json, embedded gzipped in the binary
// (web/apidocs; `make apidocs` checks it is that package's bundle) and
// rendering /api/openapi.json. No CDN, nothing fetched from elsewhere.

func (g *Gateway) serveAPIDocs(w http.ResponseWriter, _ *http.Request) {
	page, err := assets.ReadFile("web/apidocs/index.html")
	if err != nil {
		plain(w, http.StatusInternalServerError, "internal error")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	// Nothing from elsewhere: Redoc's sidebar links a logo on Redocly's
	// CDN, which this policy keeps the browser from fetching.
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; worker-src 'self' blob:; connect-src 'self'; font-src 'self' data:; frame-ancestors 'none'")
	_, _ = w.Write(page)
}

// serveRedoc sends the bundle as stored (gzip) to clients that accept it,
// and decompressed to the rest.
func (g *Gateway) serveRedoc(w http.ResponseWriter, r *http.Request) {
	gz, err := assets.ReadFile("web/apidocs/redoc.standalone.js.gz")
	if err != nil {
		plain(w, http.StatusInternalServerError, "internal error")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/javascript; charset=utf-8")
	h.Set("Cache-Control", "public, max-age=86400")
	h.Set("Vary", "Accept-Encoding")
	if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		h.Set("Content-Encoding", "gzip")
		_, _ = w.Write(gz)
		return
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		plain(w, http.StatusInternalServerError, "internal error")
		return
	}
	_, _ = io.Copy(w, zr)
}
