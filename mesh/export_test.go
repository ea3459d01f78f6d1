package mesh

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// AuthzDenied is the denial counter of caller and method.
func (m *Metrics) AuthzDenied(caller, method string) prometheus.Counter {
	return m.authzDenied.WithLabelValues(caller, method)
}

// Refused is the counter of calls refused before their handler.
func (m *Metrics) Refused(method, reason string) prometheus.Counter {
	return m.refused.WithLabelValues(method, reason)
}

// OverLimit counts calls over server's limit admitted because the process
// was not short of CPU.
func (m *Metrics) OverLimit(server string) prometheus.Counter {
	return m.overLimit.WithLabelValues(server)
}

// RunQueueWindow feeds a saturation with target per-CPU samples at the
// given times (ns), the process using share of its one CPU, and says,
// after each, whether it is saturated.
func RunQueueWindow(target, share float64, samples []float64, at []int64) []bool {
	return RunQueueWindowNeeding(target, DefaultShedCPUShare, share, samples, at)
}

// RunQueueWindowNeeding is RunQueueWindow with need as the share of its
// CPU the process must use for its run queue to count (--shed-cpu-share).
func RunQueueWindowNeeding(target, need, share float64, samples []float64, at []int64) []bool {
	s := newSaturation(target, need, 0, nil, schedWindow, schedHold)
	s.opened, s.cpuAt, s.procs, s.cpus = 0, 0, 1, 1
	var out []bool
	for i, v := range samples {
		s.add(at[i], v, share*float64(at[i])/1e9)
		out = append(out, at[i] < s.until.Load())
	}
	return out
}

// Limit is server's current concurrency limit gauge.
func (m *Metrics) Limit(server string) prometheus.Gauge {
	return m.limit.WithLabelValues(server)
}

// EstimateTTL: a method's duration estimate no completed call confirmed
// for this long is dropped (deadline.go).
const EstimateTTL = estimateTTL

// CgroupCPULimit is the CPU limit of the process's cgroup, if any.
func CgroupCPULimit() (float64, bool) { return cgroupCPULimit() }

// CPUs is the process-CPUs gauge (trellis_process_cpus).
func (m *Metrics) CPUs() prometheus.Gauge { return m.cpus }

// CPUsAfterLimitChange: a saturation of procs GOMAXPROCS under a cgroup
// CPU limit of first, which changes to then while windows close every
// 50 ms: the CPUs its share is measured against at the start, after
// 0.9 s, and after 1.1 s.
func CPUsAfterLimitChange(procs, first, then float64) (start, early, late float64) {
	limit := first
	s := newSaturation(1, DefaultShedCPUShare, 0, nil, schedWindow, schedHold)
	s.limit = func() (float64, bool) { return limit, true }
	s.setCPUs(procs)
	s.opened, s.cpuAt, s.readAt = 0, 0, 0
	start, limit = s.cpus, then
	for at := int64(0); at <= int64(1100*time.Millisecond); at += int64(5 * time.Millisecond) {
		s.add(at, 0, 0)
		if at == int64(900*time.Millisecond) {
			early = s.cpus
		}
	}
	return start, early, s.cpus
}

// SameCPUSignal reports whether two limiters read one CPU signal.
func SameCPUSignal(a, b *Limiter) bool { return a.sched != nil && a.sched == b.sched }
