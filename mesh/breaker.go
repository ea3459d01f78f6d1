package mesh

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/apperr"
)

// BreakerConfig tunes the circuit breaker of one upstream. Zero fields take
// the defaults of the original design.
type BreakerConfig struct {
	// ConsecutiveFailures trips the breaker open. Default 3.
	ConsecutiveFailures uint32
	// MaxRequests is how many trial calls pass while half-open. Default 3.
	MaxRequests uint32
	// Interval is the closed-state window after which counts reset.
	// Default 10s.
	Interval time.Duration
	// Timeout is how long the breaker stays open before half-opening.
	// Default 30s.
	Timeout time.Duration
}

// The breaker's defaults, written once: withDefaults fills a zero field
// with them and RegisterFlags shows them as the flags' defaults.
const (
	defaultBreakerFailures    = 3
	defaultBreakerMaxRequests = 3
	defaultBreakerInterval    = 10 * time.Second
	defaultBreakerTimeout     = 30 * time.Second
)

func (c BreakerConfig) withDefaults() BreakerConfig {
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = defaultBreakerFailures
	}
	if c.MaxRequests == 0 {
		c.MaxRequests = defaultBreakerMaxRequests
	}
	if c.Interval <= 0 {
		c.Interval = defaultBreakerInterval
	}
	if c.Timeout <= 0 {
		c.Timeout = defaultBreakerTimeout
	}
	return c
}

// RegisterFlags defines the breaker's flags on fs, each name prefixed
// (e.g. "breaker-": --breaker-failures), with the defaults above, in the
// manner of dskit: the component owns its configuration and the binary
// composes it.
func (c *BreakerConfig) RegisterFlags(prefix string, fs *flag.FlagSet) {
	c.ConsecutiveFailures, c.MaxRequests = defaultBreakerFailures, defaultBreakerMaxRequests
	fs.Var((*positive)(&c.ConsecutiveFailures), prefix+"failures", "consecutive upstream failures that open a circuit breaker (timeouts count only while they are at least half of the last 5 s's calls, if 20 or more)")
	fs.Var((*positive)(&c.MaxRequests), prefix+"max-requests", "trial calls a half-open breaker lets through")
	fs.DurationVar(&c.Interval, prefix+"interval", defaultBreakerInterval, "closed-breaker window after which failure counts reset")
	fs.DurationVar(&c.Timeout, prefix+"timeout", defaultBreakerTimeout, "how long an open breaker waits before half-opening")
}

// positive is a flag.Value for counts that must be at least 1.
type positive uint32

func (p *positive) String() string { return strconv.FormatUint(uint64(*p), 10) }

func (p *positive) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil || v == 0 {
		return errors.New("want a positive integer")
	}
	*p = positive(v)
	return nil
}

// IsServerFault reports whether err says the upstream failed (so it counts
// against the breaker), as opposed to the request being wrong or the caller
// giving up. DEADLINE_EXCEEDED counts only when the deadline was one the
// mesh applied (the per-upstream timeout): a caller's own tighter deadline
// says nothing about the upstream's health. RESOURCE_EXHAUSTED never
// counts: it is a limit the caller went over (a message too large, a rate)
// or a server shedding load — which is alive, and a breaker opening on it
// would turn a partial overload into a full outage.
func IsServerFault(ctx context.Context, err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return false // the caller went away
	}
	if status.Code(err) == codes.DeadlineExceeded {
		ours, _ := ctx.Value(defaultDeadlineKey{}).(bool)
		return ours
	}
	return isEndpointFault(err) // the one list of the upstream's fault codes
}

// breakerStateValue is the gauge encoding of a state.
func breakerStateValue(s gobreaker.State) float64 {
	switch s {
	case gobreaker.StateHalfOpen:
		return 1
	case gobreaker.StateOpen:
		return 2
	default:
		return 0
	}
}

// newBreaker builds the breaker for one upstream, reporting state changes
// as a log line and in the metrics.
func newBreaker(caller, upstream string, cfg BreakerConfig, log *slog.Logger, m *Metrics, onHalfOpen func(), shared *sharedOpen) *gobreaker.CircuitBreaker[struct{}] {
	cfg = cfg.withDefaults()
	m.breakerState.WithLabelValues(caller, upstream).Set(0)
	// Start every transition at zero, so dashboards and rate() see the
	// series before the first incident.
	for _, tr := range [][2]gobreaker.State{
		{gobreaker.StateClosed, gobreaker.StateOpen}, {gobreaker.StateOpen, gobreaker.StateHalfOpen},
		{gobreaker.StateHalfOpen, gobreaker.StateClosed}, {gobreaker.StateHalfOpen, gobreaker.StateOpen},
	} {
		m.breakerTransitions.WithLabelValues(caller, upstream, tr[0].String(), tr[1].String())
	}
	m.breakerRejected.WithLabelValues(caller, upstream)
	return gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        upstream,
		MaxRequests: cfg.MaxRequests,
		Interval:    cfg.Interval,
		Timeout:     cfg.Timeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= cfg.ConsecutiveFailures },
		OnStateChange: func(name string, from, to gobreaker.State) {
			m.breakerState.WithLabelValues(caller, name).Set(breakerStateValue(to))
			m.breakerTransitions.WithLabelValues(caller, name, from.String(), to.String()).Inc()
			log.Warn("circuit breaker state change", "caller", caller, "upstream", name, "from", from.String(), "to", to.String())
			switch {
			case to == gobreaker.StateHalfOpen:
				onHalfOpen()
			case shared != nil && to == gobreaker.StateOpen:
				shared.publish(true, time.Now().Add(cfg.Timeout))
			case shared != nil && to == gobreaker.StateClosed:
				shared.publish(false, time.Time{})
			}
		},
		// Success or failure is decided in the interceptor, where the
		// call's context is known; see errNotCounted and errExcluded.
		IsSuccessful: func(err error) bool { return err == nil || errors.Is(err, errNotCounted) },
		IsExcluded:   func(err error) bool { return errors.Is(err, errExcluded) },
	})
}

// The rule for deadlines that run out (timeouts): over the last
// timeoutWindow, while at least timeoutMinCalls calls ended, a timeout
// counts against the upstream's breaker only once timeouts are at least
// half of them. Below that volume every timeout counts.
const (
	timeoutWindow   = 5 * time.Second
	timeoutBuckets  = 5
	timeoutMinCalls = 20
)

// timeouts tells a slow upstream from a loaded one. A refused or reset
// connection is the upstream's own verdict, and three in a row open the
// breaker. Timeouts are not: when a busy upstream (or this host, short of
// CPU) stalls for a moment, every call then in flight runs out of time
// together — at 150 calls a second, a burst of timeouts in a row — while
// the calls before and after succeed. Counting them in a row opened the
// gateway's breaker on a healthy order service for its whole open period
// after one slow second (chaos-cluster: ~300 answers 503 per stall for
// ~100 answers 504), turning a partial slowdown into a full outage, the
// thing issue 16 asks a breaker not to do to a shedding server. A hung
// upstream, whose calls all time out, still opens it: within a few
// seconds, once timeouts are the majority of the window.
type timeouts struct {
	mu      sync.Mutex
	buckets [timeoutBuckets]struct {
		slot            int64
		calls, timedOut int
	}
}

// record notes one ended call at now; for a timeout it reports whether
// it counts against the breaker.
func (t *timeouts) record(now time.Time, timedOut bool) bool {
	slot := now.UnixNano() / int64(timeoutWindow/timeoutBuckets)
	t.mu.Lock()
	defer t.mu.Unlock()
	b := &t.buckets[slot%timeoutBuckets]
	if b.slot != slot {
		b.slot, b.calls, b.timedOut = slot, 0, 0
	}
	b.calls++
	if timedOut {
		b.timedOut++
	}
	calls, timedOutTotal := 0, 0
	for _, b := range t.buckets {
		if slot-b.slot < timeoutBuckets {
			calls += b.calls
			timedOutTotal += b.timedOut
		}
	}
	return calls < timeoutMinCalls || 2*timedOutTotal >= calls
}

// How the breaker is to take a failed call the interceptor decided on:
// errNotCounted as a success (not a server fault), errExcluded as neither
// success nor failure (a deadline that ran out while most calls to the
// upstream still succeed: see timeouts).
var (
	errNotCounted = errors.New("not a server fault")
	errExcluded   = errors.New("a timeout among successes")
)

// verdict carries a failed call's error through the breaker with how it
// is to be counted (kind: errNotCounted or errExcluded); the caller gets
// err itself.
type verdict struct{ err, kind error }

func (v verdict) Error() string        { return v.err.Error() }
func (v verdict) Is(target error) bool { return target == v.kind }
func (v verdict) Unwrap() error        { return v.err }

// breakerInterceptor runs each call through the upstream's breaker. When
// it is open the call fails at once with UNAVAILABLE naming the upstream.
//
// Whether a failure counts is decided from where it came from as well as
// its code (see countsAgainstUpstream): only what the upstream server, or the
// network to it, did may open the breaker. An error this side of the call
// made up itself — the request could not be encoded, the answer was over
// the size limit or could not be decoded — says nothing about the
// upstream's health, however its code reads.
//
// An answer RESOURCE_EXHAUSTED with grpc-retry-pushback-ms is a mesh
// server shedding load: it never counts (a server that sheds is alive),
// and it marks overload (when set) for the process's limiters.
func breakerInterceptor(caller, upstream string, cb *gobreaker.CircuitBreaker[struct{}], m *Metrics, shared *sharedOpen, overload *UpstreamOverload) grpc.UnaryClientInterceptor {
	rejected := m.breakerRejected.WithLabelValues(caller, upstream)
	var slow timeouts
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if shared != nil && cb.State() == gobreaker.StateClosed && shared.isOpen() {
			rejected.Inc()
			return status.Errorf(codes.Unavailable, "upstream %s unavailable: circuit breaker open (opened by another replica)", upstream)
		}
		_, err := cb.Execute(func() (struct{}, error) {
			var trailer metadata.MD
			err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Trailer(&trailer))...)
			if err == nil {
				slow.record(time.Now(), false)
				return struct{}{}, nil
			}
			answered := len(trailer) > 0
			if !answered {
				err = localError(upstream, err)
			} else if overload != nil && status.Code(err) == codes.ResourceExhausted && len(trailer.Get(pushbackKey)) > 0 {
				overload.Mark()
			}
			if !countsAgainstUpstream(ctx, err, answered) {
				slow.record(time.Now(), false)
				return struct{}{}, verdict{err, errNotCounted}
			}
			timedOut := status.Code(err) == codes.DeadlineExceeded
			if counts := slow.record(time.Now(), timedOut); timedOut && !counts && cb.State() == gobreaker.StateClosed {
				return struct{}{}, verdict{err, errExcluded}
			}
			return struct{}{}, err
		})
		switch {
		case err == nil:
			return nil
		case errors.Is(err, gobreaker.ErrOpenState):
			rejected.Inc()
			return status.Errorf(codes.Unavailable, "upstream %s unavailable: circuit breaker open", upstream)
		case errors.Is(err, gobreaker.ErrTooManyRequests):
			rejected.Inc()
			return status.Errorf(codes.Unavailable, "upstream %s unavailable: circuit breaker half-open, trial calls in flight", upstream)
		}
		var v verdict
		if errors.As(err, &v) {
			return v.err
		}
		return err
	}
}

// countsAgainstUpstream reports whether a failed call counts toward the
// upstream's breaker. answered says whether the error is the upstream
// server's own verdict: a mesh server attaches a trailer (the request id)
// to every error it sends, while errors made on the calling side of the
// call (by this process's gRPC client) and transport failures carry none.
//
// An answer from the upstream counts when IsServerFault says so, unless
// it says one of the upstream's own dependencies is unavailable. Without
// one, only the network failing (UNAVAILABLE: refused, reset, no route)
// and the mesh's own deadline running out count: anything else (INTERNAL
// for a request that could not be marshalled or an answer that could not
// be decoded, RESOURCE_EXHAUSTED for a message over this side's size
// limit) was decided here, about this request.
func countsAgainstUpstream(ctx context.Context, err error, answered bool) bool {
	if !IsServerFault(ctx, err) {
		return false
	}
	if answered {
		// "My own upstream is unavailable" (apperr.DependencyUnavailable):
		// the server is alive and serves what does not need it.
		return !apperr.IsDependencyUnavailable(err)
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	default:
		return false
	}
}

// localError rewrites the text of an error the client side made up, which
// names addresses, dial errors or library internals, into one a client
// several hops away can act on. A request that could not be encoded is
// the caller's mistake (INVALID_ARGUMENT): protobuf refuses strings that
// are not valid UTF-8.
func localError(upstream string, err error) error {
	st := status.Convert(err)
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		return status.Errorf(codes.Unavailable, "upstream %s unavailable", upstream)
	case codes.Internal:
		if strings.HasPrefix(msg, "grpc: error while marshaling") {
			return status.Error(codes.InvalidArgument, "invalid request: a string field is not valid UTF-8")
		}
		return status.Errorf(codes.Internal, "the answer of upstream %s could not be read", upstream)
	case codes.ResourceExhausted:
		if strings.Contains(msg, "trying to send message larger than max") {
			return status.Errorf(codes.InvalidArgument, "invalid request: larger than upstream %s accepts", upstream)
		}
		return status.Errorf(codes.ResourceExhausted, "the answer of upstream %s is larger than this caller accepts", upstream)
	}
	return err
}
