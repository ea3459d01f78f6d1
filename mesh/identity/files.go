package identity

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Files is a Source read from three PEM files — certificate chain, private
// key, trust bundle — and read again when they change. It polls rather
// than using inotify: Kubernetes replaces mounted secrets by swapping a
// symlink to a new directory, which file watches miss, and a poll every few
// seconds costs nothing.
type Files struct {
	cert, key, bundle string
	log               *slog.Logger

	cur     atomic.Pointer[filesState]
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	reloads atomic.Int64
}

type filesState struct {
	raw    [3][]byte
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

// OpenFiles reads the files now (an error if they do not hold an SVID and
// a bundle for its trust domain) and then every interval.
func OpenFiles(cert, key, bundle string, interval time.Duration, log *slog.Logger) (*Files, error) {
	f := &Files{cert: cert, key: key, bundle: bundle, log: log, stop: make(chan struct{})}
	st, err := f.read()
	if err != nil {
		return nil, err
	}
	f.cur.Store(st)
	f.wg.Add(1)
	go f.watch(interval)
	return f, nil
}

func (f *Files) read() (*filesState, error) {
	var st filesState
	for i, p := range []string{f.cert, f.key, f.bundle} {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("identity: %w", err)
		}
		st.raw[i] = b
	}
	svid, err := x509svid.Parse(st.raw[0], st.raw[1])
	if err != nil {
		return nil, fmt.Errorf("identity: %s, %s: %w", f.cert, f.key, err)
	}
	bundle, err := x509bundle.Parse(svid.ID.TrustDomain(), st.raw[2])
	if err != nil {
		return nil, fmt.Errorf("identity: %s: %w", f.bundle, err)
	}
	st.svid, st.bundle = svid, bundle
	return &st, nil
}

func (f *Files) watch(interval time.Duration) {
	defer f.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		old := f.cur.Load()
		st, err := f.read()
		if err != nil {
			// Mid-rotation (one file written, not the others) or broken:
			// keep serving the last good identity.
			f.log.Warn("identity: files not reloaded, keeping the current SVID", "error", err.Error())
			continue
		}
		if bytes.Equal(st.raw[0], old.raw[0]) && bytes.Equal(st.raw[1], old.raw[1]) && bytes.Equal(st.raw[2], old.raw[2]) {
			continue
		}
		f.cur.Store(st)
		f.reloads.Add(1)
		f.log.Info("identity: files reloaded", "id", st.svid.ID.String(), "not_after", st.svid.Certificates[0].NotAfter)
	}
}

// GetX509SVID returns the SVID last read.
func (f *Files) GetX509SVID() (*x509svid.SVID, error) { return f.cur.Load().svid, nil }

// GetX509BundleForTrustDomain returns the bundle last read, for the SVID's
// trust domain only.
func (f *Files) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return f.cur.Load().bundle.GetX509BundleForTrustDomain(td)
}

// Reloads counts the times new files were taken.
func (f *Files) Reloads() int64 { return f.reloads.Load() }

// Close stops watching.
func (f *Files) Close() error {
	f.once.Do(func() { close(f.stop) })
	f.wg.Wait()
	return nil
}
