//go:build !linux

package mesh

// cgroupCPULimit: cgroups are Linux's; elsewhere no limit is known.
func cgroupCPULimit() (float64, bool) { return 0, false }
