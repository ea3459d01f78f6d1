//go:build !unix

package mesh

// processCPU is not known here (-1): the shedding limiter's run queue
// decides alone (saturation.add).
func processCPU() float64 { return -1 }
