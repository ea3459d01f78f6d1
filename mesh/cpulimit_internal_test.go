//go:build linux

package mesh

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/procfs"
)

// TestCgroupCPULimitIn reads the CPU limit from made-up /proc and cgroup
// trees: v2 and v1, limits on the process's group or an ancestor,
// unlimited and malformed files, and a mount that does not show the
// process's group. (TestCPUSignalCPULimit, -tags cpusignal, reads a real
// one.)
func TestCgroupCPULimitIn(t *testing.T) {
	type files map[string]string // path under the cgroup mount -> content
	cases := []struct {
		name      string
		v1        bool
		group     string // the process's cgroup path
		mountRoot string // the cgroup mount's root
		files     files
		want      float64 // 0: no limit
	}{
		{"v2 leaf", false, "/kubepods/pod1/c1", "/", files{"kubepods/pod1/c1/cpu.max": "50000 100000\n"}, 0.5},
		{"v2 ancestor tighter", false, "/a/b", "/", files{"a/b/cpu.max": "max 100000\n", "a/cpu.max": "200000 100000\n", "cpu.max": "max 100000"}, 2},
		{"v2 leaf tighter", false, "/a/b", "/", files{"a/b/cpu.max": "25000 100000\n", "a/cpu.max": "200000 100000\n"}, 0.25},
		{"v2 unlimited", false, "/a", "/", files{"a/cpu.max": "max 100000\n"}, 0},
		{"v2 no files", false, "/a", "/", files{}, 0},
		{"v2 namespaced", false, "/", "/", files{"cpu.max": "150000 100000\n"}, 1.5},
		{"v2 mount of another subtree", false, "/a/b", "/c", files{"cpu.max": "50000 100000\n"}, 0},
		{"v2 mount of an ancestor", false, "/a/b", "/a", files{"b/cpu.max": "50000 100000\n"}, 0.5},
		{"v2 malformed", false, "/a", "/", files{"a/cpu.max": "fifty 100000\n"}, 0},
		{"v2 zero period", false, "/a", "/", files{"a/cpu.max": "50000 0\n"}, 0},
		{"v2 one field", false, "/a", "/", files{"a/cpu.max": "50000\n"}, 0},
		{"v2 negative", false, "/a", "/", files{"a/cpu.max": "-5 100000\n"}, 0},
		{"v1 leaf", true, "/docker/abc", "/", files{"docker/abc/cpu.cfs_quota_us": "150000\n", "docker/abc/cpu.cfs_period_us": "100000\n"}, 1.5},
		{"v1 unlimited", true, "/docker/abc", "/", files{"docker/abc/cpu.cfs_quota_us": "-1\n", "docker/abc/cpu.cfs_period_us": "100000\n"}, 0},
		{"v1 ancestor", true, "/a/b", "/", files{"a/b/cpu.cfs_quota_us": "-1", "a/b/cpu.cfs_period_us": "100000", "a/cpu.cfs_quota_us": "50000", "a/cpu.cfs_period_us": "100000"}, 0.5},
		{"v1 quota without period", true, "/a", "/", files{"a/cpu.cfs_quota_us": "50000"}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			mnt := filepath.Join(dir, "cgroup")
			for p, content := range c.files {
				writeFile(t, filepath.Join(mnt, p), content)
			}
			if err := os.MkdirAll(mnt, 0o755); err != nil {
				t.Fatal(err)
			}
			proc := filepath.Join(dir, "proc")
			if c.v1 {
				writeFile(t, filepath.Join(proc, "42", "cgroup"), "5:memory:/x\n4:cpu,cpuacct:"+c.group+"\n0::/\n")
				writeFile(t, filepath.Join(proc, "42", "mountinfo"), fmt.Sprintf(
					"30 23 0:26 / %s rw,nosuid - cgroup cgroup rw,memory\n31 23 0:27 %s %s rw,nosuid,nodev - cgroup cgroup rw,cpu,cpuacct\n",
					filepath.Join(dir, "memory"), c.mountRoot, mnt))
			} else {
				writeFile(t, filepath.Join(proc, "42", "cgroup"), "0::"+c.group+"\n")
				writeFile(t, filepath.Join(proc, "42", "mountinfo"), fmt.Sprintf(
					"22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n30 23 0:26 %s %s rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
					c.mountRoot, mnt))
			}
			if err := os.Symlink("42", filepath.Join(proc, "self")); err != nil {
				t.Fatal(err)
			}
			fs, err := procfs.NewFS(proc)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := cgroupCPULimitIn(fs)
			if !ok {
				got = 0
			}
			if got != c.want {
				t.Errorf("limit %v (found %v), want %v", got, ok, c.want)
			}
		})
	}
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
