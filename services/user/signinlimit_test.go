package user

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	goredisstore "github.com/throttled/throttled/v2/store/goredisstore.v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/quota"
)

// TestFailedSignInIsCountedWhenTheCallerHangsUp: a failure is counted in
// the shared store (the machine's Redis) even when its caller has gone by
// then — a client that hung up while its password was compared is
// counted like any other.
func TestFailedSignInIsCountedWhenTheCallerHangsUp(t *testing.T) {
	t.Parallel()
	url := os.Getenv("TRELLIS_TEST_REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.ContextTimeoutEnabled = true // as the service's client: a done context ends a call
	client := redis.NewClient(opt)
	t.Cleanup(func() { client.Close() })
	shared, err := goredisstore.NewCtx(client, "test-"+uuid.NewString()+":signin:")
	if err != nil {
		t.Fatal(err)
	}
	l, err := newSignInLimiter(AuthConfig{SignInQuota: quota.Quota{N: 3, Per: time.Hour}, SignInStore: shared, SignInStoreTimeout: 5 * time.Second}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.check(context.Background(), "k"); err != nil {
		t.Fatalf("before any failure: %v (is Redis running at %s?)", err, url)
	}
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	for range 3 {
		l.failed(gone, "k")
	}
	if err := l.check(context.Background(), "k"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("after 3 failures whose callers left: %v, want RESOURCE_EXHAUSTED (is Redis running at %s?)", err, url)
	}
}
