package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"

	"github.com/trellis-mesh/trellis/internal/proc"
)

// BuildTrellis builds cmd/trellis into dir and returns the binary's path.
// The suites that run trellis as a process (hostile, chaos) call it once
// from TestMain; it builds from the product module wherever it is called.
func BuildTrellis(dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "trellis")
	build := exec.Command("go", "build", "-o", bin, "./cmd/trellis")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build trellis: %w\n%s", err, out)
	}
	return bin, nil
}

// moduleRoot is the directory of the product module: the nearest parent
// holding cmd/trellis (suites in nested modules run from their own
// directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "cmd", "trellis", "main.go")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no cmd/trellis above the working directory")
		}
		dir = parent
	}
}

// FreeAddr returns a loopback address nothing listens on (yet), for a
// process the test starts with that address.
func FreeAddr(t testing.TB) string {
	t.Helper()
	a, err := proc.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers and readers: a
// process's or a logger's output that the test reads while it runs.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// RawCodec sends a *[]byte as it is and receives into one: malformed
// protobuf on the wire, for tests of what a server does with it. Use it
// with grpc.ForceCodecV2.
type RawCodec struct{}

var _ encoding.CodecV2 = RawCodec{}

func (RawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (RawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

// Name is "proto": the server decodes what it receives as protobuf.
func (RawCodec) Name() string { return "proto" }

// RunWithTrellis is a TestMain for suites that run trellis as a process:
// it builds cmd/trellis (or takes $TRELLIS_TEST_BIN, e.g. an older build,
// to see a test fail against it), stores the binary's path in *bin, runs
// the tests and exits with their status.
func RunWithTrellis(m *testing.M, bin *string) {
	dir, err := os.MkdirTemp("", "trellis-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if *bin = os.Getenv("TRELLIS_TEST_BIN"); *bin == "" {
		if *bin, err = BuildTrellis(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// LeakOptions are the goleak options of packages that run NATS in process.
// Two nats-server goroutines can outlive Shutdown: the access-time ticker
// (ats), which stops a moment after its last store closes, and a stream
// store's state-flush loop when the stream was being created as the server
// shut down (a test that starts a system and stops it at once). Everything
// else still counts as a leak.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server/ats.Register.func1"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*fileStore).flushStreamStateLoop"),
	}
}
