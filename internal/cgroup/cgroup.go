// Package cgroup makes CPU-limited cgroups for tests and the load
// harness: a group whose processes may use a set number of CPUs (the
// quota Docker's --cpus and a Kubernetes CPU limit set), on cgroup v2 or
// v1's cpu hierarchy. Making one needs root and a writable cgroup file
// system. (Reading a process's limit is mesh's: cgroupCPULimit.)
package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Period is the quota period every group here uses (100 ms, the kernel's
// and Docker's default).
const Period = 100_000 // µs

// Group is a CPU-limited cgroup.
type Group struct {
	// Dir is the group's directory; a process joins it by writing its pid
	// to Dir/cgroup.procs (Command).
	Dir string
	// dirs are the groups made, leaves last.
	dirs []string
}

// NewCPULimited makes the group name, limited to cpus CPUs, at the root
// of cgroup v2 or of v1's cpu hierarchy.
func NewCPULimited(name string, cpus float64) (*Group, error) {
	quota := int(cpus * Period)
	var dir string
	var limit func() error
	switch {
	case exists("/sys/fs/cgroup/cgroup.controllers"): // v2
		if c, _ := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control"); !strings.Contains(string(c), "cpu") {
			if err := write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu"); err != nil {
				return nil, err
			}
		}
		dir = filepath.Join("/sys/fs/cgroup", name)
		limit = func() error { return write(filepath.Join(dir, "cpu.max"), fmt.Sprintf("%d %d", quota, Period)) }
	case exists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"): // v1
		dir = filepath.Join("/sys/fs/cgroup/cpu", name)
		limit = func() error {
			return errors.Join(write(filepath.Join(dir, "cpu.cfs_period_us"), fmt.Sprint(Period)),
				write(filepath.Join(dir, "cpu.cfs_quota_us"), fmt.Sprint(quota)))
		}
	default:
		return nil, errors.New("cgroup: no cgroup CPU controller at /sys/fs/cgroup")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup (needs root): %w", err)
	}
	g := &Group{Dir: dir, dirs: []string{dir}}
	if err := limit(); err != nil {
		g.Remove()
		return nil, fmt.Errorf("cgroup (needs root): %w", err)
	}
	return g, nil
}

// Leaf makes an unlimited group name inside g, which processes then join
// instead (Dir), under g's limit.
func (g *Group) Leaf(name string) error {
	dir := filepath.Join(g.Dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("cgroup: %w", err)
	}
	g.Dir, g.dirs = dir, append(g.dirs, dir)
	return nil
}

// Command is bin with args run in g: a shell that joins the group and
// execs it, so the process is in the group from its first instruction
// (the Go runtime reads its limit at start).
func (g *Group) Command(bin string, args ...string) (string, []string) {
	return "/bin/sh", append([]string{"-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, g.Dir, bin}, args...)
}

// Remove removes the groups, leaves first, once the processes in them
// have exited (which reaches the cgroup a moment later).
func (g *Group) Remove() {
	for i := len(g.dirs) - 1; i >= 0; i-- {
		for range 50 {
			if err := os.Remove(g.dirs[i]); err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func write(file, s string) error { return os.WriteFile(file, []byte(s), 0o644) }

func exists(p string) bool { _, err := os.Stat(p); return err == nil }
