package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/trellis-mesh/trellis/internal/cgroup"
)

// pinCPUs, when set, is the CPU list (taskset -c) every process the
// harness starts runs on: scenario 8 gives the system under test CPUs of
// its own and the load generator the rest (splitCPUs).
var pinCPUs string

// splitCPUs gives the load generator — this process, every thread — CPU 0
// and the system under test CPUs 1 to N-1, so that overloading the system
// does not starve the generator that measures it (on two cores shared,
// at 4× the knee the generator fell behind its own schedule, and every
// latency measured from when a request was due included that). It
// returns a description and the function that undoes it; ok is false on a
// machine of one CPU or without taskset (util-linux), where nothing is
// pinned.
func splitCPUs() (desc string, undo func(), ok bool) {
	n := runtime.NumCPU()
	if n < 2 {
		return "", func() {}, false
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return "", func() {}, false
	}
	var all, gen unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		return "", func() {}, false
	}
	gen.Set(0)
	setAll := func(set *unix.CPUSet) {
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, t := range tasks {
			if tid, err := strconv.Atoi(t.Name()); err == nil {
				_ = unix.SchedSetaffinity(tid, set)
			}
		}
	}
	procs := runtime.GOMAXPROCS(1)
	setAll(&gen)
	pinCPUs = "1"
	if n > 2 {
		pinCPUs = fmt.Sprintf("1-%d", n-1)
	}
	desc = fmt.Sprintf("the system on CPU %s, the load generator on CPU 0", pinCPUs)
	return desc, func() {
		pinCPUs = ""
		setAll(&all)
		runtime.GOMAXPROCS(procs)
	}, true
}

// limited, when set, is the cgroup every process the harness starts runs
// in: scenario 8 with -overload-cpu-limit (limitCPUs).
var limited *cgroup.Group

// limitCPUs makes a cgroup limited to cpus CPUs for the system under
// test, and returns a description and the function that removes it
// (after the processes in it have stopped). Making one needs root.
func limitCPUs(cpus float64) (desc string, undo func(), err error) {
	g, err := cgroup.NewCPULimited(fmt.Sprintf("trellis-bench-%d", os.Getpid()), cpus)
	if err != nil {
		return "", nil, fmt.Errorf("-overload-cpu-limit: %w", err)
	}
	limited = g
	return fmt.Sprintf("the system in a cgroup limited to %g CPUs (%s), unpinned, beside the load generator", cpus, g.Dir), func() {
		limited = nil
		g.Remove()
	}, nil
}
