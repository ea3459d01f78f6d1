package mesh

import (
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
)

// cgroupCPULimit is the CPU bandwidth limit, in CPUs (quota over
// period), of the cgroup this process runs in — the tightest of its own
// and of its ancestors visible in the cgroup mount — and whether one is
// set: cgroup v2's cpu.max, or v1's cpu.cfs_quota_us and
// cpu.cfs_period_us. Docker's --cpus and a Kubernetes CPU limit set it.
//
// The Go runtime reads the same limit for its default GOMAXPROCS, but
// rounds it up, to at least 2 where the machine has two CPUs: a process
// limited to half a CPU runs with GOMAXPROCS 2, and measured against it,
// uses a quarter of its CPUs when its quota is spent. The shedding
// signal's CPU-share condition needs the limit itself (saturation).
//
// /proc/self/cgroup and /proc/self/mountinfo are parsed by procfs (the
// parser client_golang's process collector uses); the limit files are
// read here.
func cgroupCPULimit() (float64, bool) {
	fs, err := procfs.NewFS(procfs.DefaultMountPoint)
	if err != nil {
		return 0, false
	}
	return cgroupCPULimitIn(fs)
}

// cgroupCPULimitIn is cgroupCPULimit with /proc at fs (tests).
func cgroupCPULimitIn(fs procfs.FS) (float64, bool) {
	self, err := fs.Self()
	if err != nil {
		return 0, false
	}
	groups, err := self.Cgroups()
	if err != nil {
		return 0, false
	}
	mounts, err := self.MountInfo()
	if err != nil {
		return 0, false
	}
	limit, found := 0.0, false
	for _, g := range groups {
		for _, m := range mounts {
			var read func(dir string) (float64, bool)
			switch {
			case g.HierarchyID == 0 && m.FSType == "cgroup2":
				read = cpuMax
			case g.HierarchyID != 0 && m.FSType == "cgroup" && slices.Contains(g.Controllers, "cpu") && hasKey(m.SuperOptions, "cpu"):
				read = cfsQuota
			default:
				continue
			}
			rel, err := filepath.Rel(m.Root, g.Path)
			if err != nil || strings.HasPrefix(rel, "..") {
				continue // this mount does not show the process's cgroup
			}
			for dir := rel; ; dir = path.Dir(dir) {
				if l, ok := read(filepath.Join(m.MountPoint, dir)); ok && (!found || l < limit) {
					limit, found = l, true
				}
				if dir == "." || dir == "/" {
					break
				}
			}
		}
	}
	return limit, found
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

// cpuMax reads cgroup v2's "quota period" ("max period": no limit).
func cpuMax(dir string) (float64, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "cpu.max"))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	return ratio(f[0], f[1])
}

// cfsQuota reads cgroup v1's quota and period (quota -1: no limit).
func cfsQuota(dir string) (float64, bool) {
	q, err := os.ReadFile(filepath.Join(dir, "cpu.cfs_quota_us"))
	if err != nil {
		return 0, false
	}
	p, err := os.ReadFile(filepath.Join(dir, "cpu.cfs_period_us"))
	if err != nil {
		return 0, false
	}
	return ratio(strings.TrimSpace(string(q)), strings.TrimSpace(string(p)))
}

// ratio is quota/period in CPUs when both are positive integers.
func ratio(quota, period string) (float64, bool) {
	q, err := strconv.ParseInt(quota, 10, 64)
	if err != nil || q <= 0 {
		return 0, false
	}
	p, err := strconv.ParseInt(period, 10, 64)
	if err != nil || p <= 0 {
		return 0, false
	}
	return float64(q) / float64(p), true
}
