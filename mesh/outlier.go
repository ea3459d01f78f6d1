package mesh

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/status"

	// Registers gRPC's outlier-detection load-balancing policy (gRFC A50),
	// which lives with the xDS balancers.
	_ "google.golang.org/grpc/xds"
)

// OutlierConfig is per-endpoint outlier ejection for upstreams with
// several replicas: gRPC's outlier_detection policy (gRFC A50) over
// round_robin, counting as failures only what the breaker counts as the
// upstream's fault (UNAVAILABLE, INTERNAL, UNKNOWN, DEADLINE_EXCEEDED), so
// callers sending bad requests cannot get healthy replicas ejected.
type OutlierConfig struct {
	// Interval between ejection sweeps. Default 1s.
	Interval time.Duration
	// BaseEjection is how long an endpoint stays out the first time; each
	// further ejection in a row adds as much, up to MaxEjection. Default 5s.
	BaseEjection time.Duration
	// MaxEjection caps an ejection. Default 30s.
	MaxEjection time.Duration
	// FailurePercent ejects an endpoint whose share of faults in a sweep
	// interval is at least this. 0 turns ejection off. Default 50.
	FailurePercent int
	// MinRequests is how many calls an endpoint needs in an interval to be
	// judged. Default 5.
	MinRequests int
	// MaxEjectionPercent caps the share of endpoints out at once: at 50, a
	// fault on every replica leaves half of them in the rotation. Default 50.
	MaxEjectionPercent int
}

// RegisterFlags defines outlier-failure-percent, outlier-interval,
// outlier-base-ejection, outlier-max-ejection-percent, each prefixed.
func (c *OutlierConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	fs.IntVar(&c.FailurePercent, prefix+"outlier-failure-percent", 50, "eject an upstream replica whose calls fail (UNAVAILABLE, INTERNAL, UNKNOWN, DEADLINE_EXCEEDED) at least this % in an --outlier-interval (gRFC A50 outlier detection); 0 turns ejection off")
	fs.DurationVar(&c.Interval, prefix+"outlier-interval", time.Second, "how often upstream replicas are judged for ejection")
	fs.DurationVar(&c.BaseEjection, prefix+"outlier-base-ejection", 5*time.Second, "how long an ejected replica stays out the first time (longer each time in a row, up to 30s)")
	fs.IntVar(&c.MaxEjectionPercent, prefix+"outlier-max-ejection-percent", 50, "the most upstream replicas ejected at once, in % (at 50, at least half stay in the rotation)")
}

// Validate reports settings that cannot work.
func (c *OutlierConfig) Validate() error {
	if c.FailurePercent < 0 || c.FailurePercent > 100 || c.MaxEjectionPercent < 0 || c.MaxEjectionPercent > 100 {
		return errors.New("--outlier-failure-percent and --outlier-max-ejection-percent must be between 0 and 100")
	}
	if c.FailurePercent > 0 && (c.Interval <= 0 || c.BaseEjection <= 0) {
		return errors.New("--outlier-interval and --outlier-base-ejection must be positive")
	}
	return nil
}

func (c OutlierConfig) withDefaults() OutlierConfig {
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.BaseEjection <= 0 {
		c.BaseEjection = 5 * time.Second
	}
	if c.MaxEjection < c.BaseEjection {
		c.MaxEjection = max(30*time.Second, c.BaseEjection)
	}
	if c.MinRequests <= 0 {
		c.MinRequests = 5
	}
	if c.MaxEjectionPercent <= 0 {
		c.MaxEjectionPercent = 50
	}
	return c
}

// loadBalancing is the service config's loadBalancingConfig: round_robin,
// under fault-counting outlier detection unless it is off.
func (c OutlierConfig) loadBalancing() []map[string]any {
	rr := []map[string]any{{"round_robin": map[string]any{}}}
	if c.FailurePercent <= 0 {
		return rr
	}
	c = c.withDefaults()
	seconds := func(d time.Duration) string { return fmt.Sprintf("%gs", d.Seconds()) }
	return []map[string]any{{outlierPolicy: map[string]any{
		"interval":           seconds(c.Interval),
		"baseEjectionTime":   seconds(c.BaseEjection),
		"maxEjectionTime":    seconds(c.MaxEjection),
		"maxEjectionPercent": c.MaxEjectionPercent,
		"failurePercentageEjection": map[string]any{
			"threshold":             c.FailurePercent,
			"enforcementPercentage": 100,
			"minimumHosts":          2,
			"requestVolume":         c.MinRequests,
		},
		"childPolicy": rr,
	}}}
}

// outlierPolicy is gRPC's outlier detection with the mesh's idea of a
// failure. gRPC's policy counts every non-OK status; a caller flooding an
// upstream with requests for missing records (NOT_FOUND) would get
// healthy replicas ejected. This policy is that one, built unchanged,
// except that the calls' outcomes it sees are filtered: only upstream
// faults count.
const outlierPolicy = "trellis_outlier_detection"

const grpcOutlierPolicy = "outlier_detection_experimental"

func init() { balancer.Register(faultOutlierBuilder{}) }

type faultOutlierBuilder struct{}

func (faultOutlierBuilder) Name() string { return outlierPolicy }

func (faultOutlierBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	return balancer.Get(grpcOutlierPolicy).Build(faultFilterCC{cc}, opts)
}

func (faultOutlierBuilder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	p, ok := balancer.Get(grpcOutlierPolicy).(balancer.ConfigParser)
	if !ok {
		return nil, errors.New("mesh: gRPC's outlier detection policy is not registered")
	}
	return p.ParseConfig(js)
}

// faultFilterCC hands the channel the outlier policy's pickers wrapped.
type faultFilterCC struct{ balancer.ClientConn }

func (c faultFilterCC) UpdateState(s balancer.State) {
	if s.Picker != nil {
		s.Picker = faultFilterPicker{s.Picker}
	}
	c.ClientConn.UpdateState(s)
}

// faultFilterPicker reports a call that ended with the caller's mistake
// (NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED, RESOURCE_EXHAUSTED …)
// as a success to the outlier policy: the replica answered.
type faultFilterPicker struct{ balancer.Picker }

func (p faultFilterPicker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	r, err := p.Picker.Pick(info)
	if err != nil || r.Done == nil {
		return r, err
	}
	done := r.Done
	r.Done = func(di balancer.DoneInfo) {
		if di.Err != nil && !isEndpointFault(di.Err) {
			di.Err = nil
		}
		done(di)
	}
	return r, nil
}

// isEndpointFault reports the codes that say the upstream failed, for
// outlier ejection; IsServerFault narrows DEADLINE_EXCEEDED to the mesh's
// own deadline for the breaker. Here a deadline counts whoever set it (a
// replica that hangs shows no other way).
func isEndpointFault(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.DeadlineExceeded:
		return true
	}
	return false
}
