package quota

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/trellis-mesh/trellis/internal/redact"
)

// DefaultStoreTimeout bounds one check against a shared store (Redis,
// --redis-timeout) by default: Redis answers in well under a
// millisecond, and a check must not hold a request for long.
const DefaultStoreTimeout = 250 * time.Millisecond

// StoreFailures returns what a limit calls when its shared store did not
// answer and the request was let through: it counts them in the counter
// name (registered on reg) and logs msg, with the error redacted, at most
// every 5 s — a limit that stopped working is seen, without a log line
// per request.
func StoreFailures(reg prometheus.Registerer, log *slog.Logger, name, help, msg string) (func(error), error) {
	errs := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	if err := reg.Register(errs); err != nil {
		return nil, err
	}
	every := rate.NewLimiter(0.2, 1)
	return func(err error) {
		errs.Inc()
		if every.Allow() {
			log.Warn(msg, "error", redact.String(err.Error()))
		}
	}, nil
}
