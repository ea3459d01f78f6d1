package mesh

import (
	"math"
	"runtime"
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// saturation is the shedding limiters' local-overload signal, one per
// process (Metrics.sharedSaturation): whether this process is short of
// CPU, read from the Go scheduler's run queue — how many goroutines are
// ready to run but wait for a CPU (runtime/metrics
// /sched/goroutines/runnable:goroutines), per CPU it may use
// (GOMAXPROCS), its median over a window.
//
// Latency alone cannot tell local overload from a slow upstream: a call
// that waits a second for a hung replica looks to a latency-driven limiter
// exactly like a call stuck behind too many others. The scheduler can:
// a goroutine waiting on the network, a database or a lock is "waiting",
// not "runnable", however long it waits. So a slow upstream, a partitioned
// database or a restarting replica never fills the run queue; more work
// than the CPUs can do always does.
//
// (The scheduler's latency histogram, /sched/latencies:seconds, says the
// same in principle, but the runtime records one goroutine transition in
// eight: a 50 ms window of a process doing a few hundred calls a second
// holds a handful of samples, and one goroutine late behind a GC cycle
// made a p99 of them say "saturated" in tests. The run queue is a count,
// read at any moment.)
//
// It is sampled every sampleEvery by a timer that runs while calls ask
// for it and stops a second after the last did: no goroutine of its own
// between samples, nothing at all when idle. (Sampling when calls arrive
// would be cheaper but biased: calls arrive in bursts, and a sample taken
// at each burst sees the burst's goroutines and little else — a test with
// callers in lockstep measured a quiet process "short of CPU" that way.)
type saturation struct {
	target float64 // median runnable goroutines per CPU
	// share: the process must have used at least this share of the CPUs
	// it may use (GOMAXPROCS) in the window for a long run queue to
	// count (ShedConfig.CPUShare). A process starved by its neighbours —
	// the CPU taken by other processes on the machine — has a long run
	// queue too, but refusing its own callers would not give it the CPU
	// back; one short of CPU for its own work uses all it gets (or all
	// its cgroup quota allows: capacity).
	share float64
	// entitled, when positive, is the CPUs the process is entitled to
	// (ShedConfig.CPUMillis: its Kubernetes CPU request): its share is
	// measured against it where it is under GOMAXPROCS.
	entitled float64
	window   int64 // ns
	hold     int64 // ns

	until atomic.Int64 // saturated until this unix ns
	last  atomic.Uint64
	used  atomic.Int64 // unix ns Saturated was last asked
	armed atomic.Bool  // the sampling timer runs
	timer *time.Timer
	// cpusGauge, when set, shows cpus (trellis_process_cpus).
	cpusGauge prometheus.Gauge

	mu      sync.Mutex
	sample  []metrics.Sample
	samples []float64 // this window's samples (guarded by mu)
	opened  int64
	cpuAt   float64                // the process's CPU seconds when the window opened
	procs   float64                // GOMAXPROCS at the last sample
	cpus    float64                // what the share is measured against (capacity)
	readAt  int64                  // unix ns capacity was last worked out
	limit   func() (float64, bool) // the cgroup's CPU limit: cgroupCPULimit
	recent  [earlySamples]point    // the last samples, for early (a ring)
	next    int
}

// point is one sample, kept for the early decision.
type point struct {
	at          int64 // unix ns
	cpu, perCPU float64
}

const (
	schedRunnable   = "/sched/goroutines/runnable:goroutines"
	schedGOMAXPROCS = "/sched/gomaxprocs:threads"
	// sampleEvery: ten samples per window, each one runtime/metrics read
	// (well under a microsecond).
	sampleEvery = 5 * time.Millisecond
	// minWindowSamples: a window closes once it is long enough and holds
	// this many samples (a starved process samples rarely).
	minWindowSamples = 5
)

func newSaturation(target, share, entitled float64, cpusGauge prometheus.Gauge, window, hold time.Duration) *saturation {
	s := &saturation{target: target, share: share, entitled: entitled, cpusGauge: cpusGauge, window: int64(window), hold: int64(hold),
		sample: []metrics.Sample{{Name: schedRunnable}, {Name: schedGOMAXPROCS}}, limit: cgroupCPULimit}
	s.opened, s.cpuAt = time.Now().UnixNano(), processCPU()
	s.setCPUs(float64(runtime.GOMAXPROCS(0)))
	s.timer = time.AfterFunc(time.Hour, s.tick)
	s.timer.Stop()
	return s
}

// Saturated reports whether the process was short of CPU in its last
// window, or in any window of the hold before it.
func (s *saturation) Saturated() bool {
	now := time.Now().UnixNano()
	s.used.Store(now)
	if !s.armed.Load() && s.armed.CompareAndSwap(false, true) {
		s.timer.Reset(sampleEvery)
	}
	return now < s.until.Load()
}

// RunQueue is the last window's median run queue per CPU.
func (s *saturation) RunQueue() float64 {
	return math.Float64frombits(s.last.Load())
}

// tick takes one sample and runs again unless nobody asked for a second.
func (s *saturation) tick() {
	now := time.Now().UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	metrics.Read(s.sample)
	s.add(now, s.runQueue(s.sample[0].Value, s.sample[1].Value), processCPU())
	if now-s.used.Load() < int64(time.Second) {
		s.timer.Reset(sampleEvery)
		return
	}
	// Idle: stop, and start a new window when calls come back. A call
	// that asks between the check and the store finds the timer armed and
	// does not start it; the next one will.
	s.samples, s.opened, s.cpuAt = s.samples[:0], now, processCPU()
	s.next = 0 // no early decision on samples from before the pause
	s.armed.Store(false)
}

// add counts one sample (the run queue per CPU, and the process's CPU
// seconds so far) and closes the window when it is due: its median
// decides, if the process used at least its share of its CPUs. A
// median, not a mean: a burst — every caller's sleep ending on one timer,
// a GC cycle — fills the queue for a sample or two, which a mean of ten
// turned into "short of CPU" in tests; a process short of CPU has a queue
// in most samples.
func (s *saturation) add(now int64, perCPU, cpu float64) {
	s.samples = append(s.samples, perCPU)
	s.recent[s.next%earlySamples] = point{at: now, cpu: cpu, perCPU: perCPU}
	s.next++
	if now-s.opened < s.window || len(s.samples) < minWindowSamples {
		s.early(now, cpu)
		return
	}
	slices.Sort(s.samples)
	median := s.samples[len(s.samples)/2]
	share := s.cpuShare(s.opened, s.cpuAt, now, cpu)
	s.samples, s.opened, s.cpuAt = s.samples[:0], now, cpu
	if now-s.readAt >= capacityEvery {
		s.setCPUs(s.procs) // a new cgroup limit at the same GOMAXPROCS
	}
	s.last.Store(math.Float64bits(median))
	if median > s.target && share >= s.share {
		s.until.Store(now + s.hold)
	}
}

// early decides before the window closes: when the run queue was over
// earlyFactor times the target in each of the last earlySamples samples,
// spanning at least earlySpan, and the process used at least its share of
// its CPUs over that span. A window that opened quiet and met a sudden
// overload late closes with a quiet median, and the next one decides 50 ms
// later: 50–100 ms in which every call over the limit is admitted —
// measured at 4x the knee after idling at 100 calls a second: ~300
// calls admitted in the overload's first 100 ms, answered up to
// 340–560 ms later (123–142 within 85 ms with this). A burst (callers
// woken by one timer, a GC cycle) fills the queue for a sample or two,
// not for three in a row at earlyFactor times the target.
func (s *saturation) early(now int64, cpu float64) {
	if s.next < earlySamples || now < s.until.Load() {
		return
	}
	first := s.recent[s.next%earlySamples] // the oldest of the ring
	span := now - first.at
	if span < earlySpan {
		return
	}
	for _, p := range s.recent {
		if p.perCPU <= earlyFactor*s.target {
			return
		}
	}
	if s.cpuShare(first.at, first.cpu, now, cpu) < s.share {
		return
	}
	s.until.Store(now + s.hold)
}

// cpuShare is the share of its CPUs (GOMAXPROCS) the process used between
// two samples of its CPU seconds; 1 where the system does not tell
// (processCPU negative): the run queue alone decides.
func (s *saturation) cpuShare(from int64, cpuFrom float64, now int64, cpu float64) float64 {
	if cpu < 0 {
		return 1
	}
	return (cpu - cpuFrom) / (float64(now-from) / 1e9 * s.cpus)
}

// capacity is the CPUs the process may use, which its CPU share is
// measured against: GOMAXPROCS, or less where the cgroup's CPU limit is
// lower (the runtime rounds that up, to at least 2 on a machine of two
// CPUs or more: cgroupCPULimit) or the process is entitled to less
// (entitled). Never under a hundredth of a CPU.
func capacity(procs, entitled float64, limit func() (float64, bool)) float64 {
	c := procs
	if l, ok := limit(); ok {
		c = min(c, l)
	}
	if entitled > 0 {
		c = min(c, entitled)
	}
	return max(c, 0.01)
}

// capacityEvery: capacity is worked out again at the first window that
// closes this long after the last time. GOMAXPROCS follows a cgroup's
// limit only in whole CPUs (rounded up, at least 2), so a limit that
// changes from 0.5 to 1.5 CPUs leaves GOMAXPROCS at 2 and is seen only
// here — the runtime itself looks for a new limit about once a second
// too. A read of /proc/self/cgroup, mountinfo and cpu.max costs tens of
// microseconds.
const capacityEvery = int64(time.Second)

// setCPUs takes GOMAXPROCS and works out capacity again.
func (s *saturation) setCPUs(procs float64) {
	s.procs, s.cpus, s.readAt = procs, capacity(procs, s.entitled, s.limit), time.Now().UnixNano()
	if s.cpusGauge != nil {
		s.cpusGauge.Set(s.cpus)
	}
}

const (
	earlySamples = 3
	earlySpan    = int64(10 * time.Millisecond)
	earlyFactor  = 8.0
)

// runQueue is runnable goroutines per CPU from the two samples (0 when
// the runtime does not have them); it remembers GOMAXPROCS.
func (s *saturation) runQueue(runnable, procs metrics.Value) float64 {
	if runnable.Kind() != metrics.KindUint64 || procs.Kind() != metrics.KindUint64 {
		return 0
	}
	if p := float64(max(procs.Uint64(), 1)); p != s.procs {
		s.setCPUs(p) // the runtime follows the cgroup's limit: read it again
	}
	return float64(runnable.Uint64()) / s.procs
}
