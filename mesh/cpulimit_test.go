//go:build cpusignal && linux

package mesh_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/mesh"
)

// cpuLimitChild names the cgroup test's child run (TestCPUSignalCPULimit).
const cpuLimitChild = "TRELLIS_TEST_CPU_LIMIT_CHILD"

// TestCPUSignalCPULimit runs a shedding server in a real cgroup limited to
// half a CPU (as Docker's --cpus 0.5 or a Kubernetes limit of 500m do),
// the limit set on a parent cgroup and the process in an unlimited leaf
// below it. The Go runtime rounds the limit up, to GOMAXPROCS 2 on this
// machine, so a process that spends its whole quota uses a quarter of
// its GOMAXPROCS: measured against GOMAXPROCS, the CPU-share condition
// (--shed-cpu-share 0.5) took it for "starved by neighbours" and never
// refused a call, however far over its limit. Measured against the
// limit, it is short of CPU and sheds.
//
// Making a cgroup needs root and a writable cgroup file system (CI has
// both; the chaos-cluster suite needs root too).
func TestCPUSignalCPULimit(t *testing.T) {
	if os.Getenv(cpuLimitChild) != "" {
		cpuLimitChildRun(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a cgroup (CI runs it as root)")
	}
	parent, leaf := makeCgroup(t, 50_000, 100_000)
	cmd := exec.Command("/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, leaf,
		os.Args[0], "-test.run=^TestCPUSignalCPULimit$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), cpuLimitChild+"=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("in %s (limit 0.5 CPU on %s):\n%s", leaf, parent, out.String())
	if err != nil {
		t.Errorf("the child failed: %v", err)
	}
}

// cpuLimitChildRun is the child: in the half-CPU cgroup, the limit is
// read (from the parent), and CPU overload is shed with the default
// CPU-share condition.
func cpuLimitChildRun(t *testing.T) {
	limit, ok := mesh.CgroupCPULimit()
	if !ok || limit != 0.5 {
		t.Fatalf("cgroup CPU limit = %v, %v; want 0.5 (the parent's)", limit, ok)
	}
	cfg := mesh.ShedConfig{RunQueue: mesh.DefaultShedRunQueue, CPUShare: mesh.DefaultShedCPUShare}
	refused, served, over, cpus := shedUnderConfig(t, cfg, func() { spin(4 * time.Millisecond); time.Sleep(20 * time.Millisecond) })
	t.Logf("GOMAXPROCS-sized load in half a CPU: %d refused, %d served, %v admitted over the limit, share measured against %v CPUs", refused, served, over, cpus)
	if cpus != 0.5 {
		t.Errorf("the CPU share was measured against %v CPUs; want the limit, 0.5", cpus)
	}
	if refused == 0 || served == 0 {
		t.Errorf("a process short of CPU in its cgroup: %d refused, %d served; want both (it was taken for starved by neighbours)", refused, served)
	}
	// An entitlement under the limit (--shed-cpu-millis) is what counts.
	cfg.CPUMillis = 250
	_, _, _, cpus = shedUnderConfig(t, cfg, func() {})
	if cpus != 0.25 {
		t.Errorf("with --shed-cpu-millis 250 the share was measured against %v CPUs; want 0.25", cpus)
	}
}

// makeCgroup makes a cgroup limited to quota/period CPUs with an
// unlimited leaf in it, on cgroup v2 or v1's cpu hierarchy, removed when
// the test ends.
func makeCgroup(t *testing.T, quota, period int) (parent, leaf string) {
	t.Helper()
	name := fmt.Sprintf("trellis-test-%x", rand.Uint32())
	write := func(file, s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
			t.Fatalf("cgroup: %v", err)
		}
	}
	var limitFile func(dir string)
	switch {
	case exists("/sys/fs/cgroup/cgroup.controllers"): // v2
		if c, _ := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control"); !strings.Contains(string(c), "cpu") {
			write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu")
		}
		parent = filepath.Join("/sys/fs/cgroup", name)
		limitFile = func(dir string) { write(filepath.Join(dir, "cpu.max"), fmt.Sprintf("%d %d", quota, period)) }
	case exists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"): // v1
		parent = filepath.Join("/sys/fs/cgroup/cpu", name)
		limitFile = func(dir string) {
			write(filepath.Join(dir, "cpu.cfs_period_us"), fmt.Sprint(period))
			write(filepath.Join(dir, "cpu.cfs_quota_us"), fmt.Sprint(quota))
		}
	default:
		t.Fatal("no writable cgroup CPU controller at /sys/fs/cgroup")
	}
	leaf = filepath.Join(parent, "leaf")
	if err := os.MkdirAll(leaf, 0o755); err != nil {
		t.Fatalf("cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The child has exited: the groups are empty and can go.
		for _, d := range []string{leaf, parent} {
			for i := 0; i < 50; i++ {
				if err := os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	limitFile(parent)
	return parent, leaf
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }
