// Package proc runs the processes of a system under test — trellis
// components, nats-server, baseline servers — for the load harness and the
// suites that attack a running system: start, stop gracefully or kill,
// read their CPU time and memory from /proc, wait until they are ready.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is one started process.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	done chan struct{}
}

// Start runs bin with args, its output to out.
func Start(name, bin string, out io.Writer, args ...string) (*Proc, error) {
	return StartIn("", name, bin, out, args...)
}

// StartIn is Start in working directory dir ("" for the current one).
func StartIn(dir, name, bin string, out io.Writer, args ...string) (*Proc, error) {
	p := &Proc{Name: name, Cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.Cmd.Dir = dir
	p.Cmd.Stdout, p.Cmd.Stderr = out, out
	if err := p.Cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	go func() { _ = p.Cmd.Wait(); close(p.done) }()
	return p, nil
}

// Exited is closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// Stop asks the process to stop (SIGTERM) and kills it if it has not
// exited within grace. It returns once the process is gone.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Kill()
	}
}

// Kill is kill -9, returning once the process is gone.
func (p *Proc) Kill() {
	_ = p.Cmd.Process.Kill()
	<-p.done
}

// Usage is a process's CPU time and peak resident memory.
type Usage struct {
	CPUSeconds float64 `json:"cpu_seconds"`
	PeakRSSMiB float64 `json:"peak_rss_mib"`
}

const clockTicks = 100.0 // USER_HZ on Linux

// Usage reads the running process's CPU time and peak RSS from /proc.
func (p *Proc) Usage() Usage {
	pid := strconv.Itoa(p.Cmd.Process.Pid)
	var u Usage
	if stat, err := os.ReadFile("/proc/" + pid + "/stat"); err == nil {
		// Fields after the command name (which may hold spaces) start at ')'.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
		if len(f) > 12 {
			ut, _ := strconv.ParseFloat(f[11], 64)
			st, _ := strconv.ParseFloat(f[12], 64)
			u.CPUSeconds = (ut + st) / clockTicks
		}
	}
	if kb, err := p.status("VmHWM:"); err == nil {
		u.PeakRSSMiB = float64(kb) / 1024
	}
	return u
}

// RSS is the process's resident set size now, in bytes.
func (p *Proc) RSS() (int64, error) {
	kb, err := p.status("VmRSS:")
	return kb << 10, err
}

// status reads one kB field of /proc/<pid>/status.
func (p *Proc) status(field string) (int64, error) {
	st, err := os.ReadFile("/proc/" + strconv.Itoa(p.Cmd.Process.Pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(st), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc status", field)
}

// FreeAddr returns a loopback address nothing listens on (yet).
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// WaitHTTP polls url until it answers 200, the process exits, or within
// passes.
func (p *Proc) WaitHTTP(url string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return errors.New(p.Name + " exited before " + url + " was ready")
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready at %s within %v", p.Name, url, within)
}
