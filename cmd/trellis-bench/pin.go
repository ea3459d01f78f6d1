package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
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

// cgroupDir, when set, is the cgroup every process the harness starts
// runs in: scenario 8 with -overload-cpu-limit (limitCPUs).
var cgroupDir string

// limitCPUs makes a cgroup limited to cpus CPUs (a quota of cpus×100 ms
// per 100 ms, as Docker's --cpus and a Kubernetes CPU limit set) for the
// system under test, on cgroup v2 or v1's cpu hierarchy, and returns a
// description and the function that removes it (after the processes in it
// have stopped). Making one needs root.
func limitCPUs(cpus float64) (desc string, undo func(), err error) {
	const period = 100_000
	quota := int(cpus * period)
	name := fmt.Sprintf("trellis-bench-%d", os.Getpid())
	var dir string
	write := func(file, s string) {
		if err == nil {
			err = os.WriteFile(file, []byte(s), 0o644)
		}
	}
	switch {
	case exists("/sys/fs/cgroup/cgroup.controllers"): // v2
		if c, _ := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control"); !strings.Contains(string(c), "cpu") {
			write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu")
		}
		dir = filepath.Join("/sys/fs/cgroup", name)
		if err = os.Mkdir(dir, 0o755); err == nil {
			write(filepath.Join(dir, "cpu.max"), fmt.Sprintf("%d %d", quota, period))
		}
	case exists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"): // v1
		dir = filepath.Join("/sys/fs/cgroup/cpu", name)
		if err = os.Mkdir(dir, 0o755); err == nil {
			write(filepath.Join(dir, "cpu.cfs_period_us"), fmt.Sprint(period))
			write(filepath.Join(dir, "cpu.cfs_quota_us"), fmt.Sprint(quota))
		}
	default:
		return "", nil, errors.New("-overload-cpu-limit: no cgroup CPU controller at /sys/fs/cgroup")
	}
	if err != nil {
		_ = os.Remove(dir)
		return "", nil, fmt.Errorf("-overload-cpu-limit (needs root): %w", err)
	}
	cgroupDir = dir
	return fmt.Sprintf("the system in a cgroup limited to %g CPUs (%s), unpinned, beside the load generator", cpus, dir), func() {
		cgroupDir = ""
		for range 50 { // the processes' exit reaches the cgroup a moment later
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}, nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }
