//go:build cpusignal && linux

package mesh_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/cgroup"
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
	g, err := cgroup.NewCPULimited(fmt.Sprintf("trellis-test-%x", rand.Uint32()), 0.5)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Remove) // after the child has exited: the groups are empty
	parent := g.Dir
	if err := g.Leaf("leaf"); err != nil {
		t.Fatal(err)
	}
	sh, args := g.Command(os.Args[0], "-test.run=^TestCPUSignalCPULimit$", "-test.v", "-test.count=1")
	cmd := exec.Command(sh, args...)
	cmd.Env = append(os.Environ(), cpuLimitChild+"=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Logf("in %s (limit 0.5 CPU on %s):\n%s", g.Dir, parent, out.String())
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
