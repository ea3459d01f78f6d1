package gateway_test

import (
	"context"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	userv1 "github.com/trellis-mesh/trellis/gen/trellis/user/v1"
	"github.com/trellis-mesh/trellis/internal/app"
)

// BenchmarkGetUser reads one user directly over gRPC and through the REST
// gateway (HTTP/JSON -> gateway -> gRPC), in the same run against the same
// user service. serial: one caller, so ns/op is latency (p50 reported too);
// parallel: many callers, so ns/op is CPU per call (throughput).
func BenchmarkGetUser(b *testing.B) {
	s := startSystem(b, func(c *app.Config) { c.LogLevel = "error" })
	id := s.createUser(b, "bench@example.com")
	direct := userv1.NewUserServiceClient(s.user.Dial(b, app.TargetUser))
	httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	url := s.http.base + "/api/v1/users/" + id

	viaGRPC := func() error {
		_, err := direct.GetUser(context.Background(), &userv1.GetUserRequest{Id: id})
		return err
	}
	viaHTTP := func() error {
		resp, err := httpc.Get(url)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
		return nil
	}
	for _, mode := range []struct {
		name string
		call func() error
	}{{"direct", viaGRPC}, {"gateway", viaHTTP}} {
		b.Run("serial/"+mode.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, 4096)
			b.ReportAllocs()
			for b.Loop() {
				start := time.Now()
				if err := mode.call(); err != nil {
					b.Fatal(err)
				}
				if len(lat) < cap(lat) {
					lat = append(lat, time.Since(start))
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		})
		b.Run("parallel/"+mode.name, func(b *testing.B) {
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := mode.call(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
