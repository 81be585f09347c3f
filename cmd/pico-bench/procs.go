package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// proc is a child process of the harness. Each child leads its own process
// group, so the harness's terminal SIGINT does not reach it, and killing the
// group by the child's PID reaches anything it forked.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has been waited for

	mu      sync.Mutex
	lines   []string // stdout and stderr lines, in arrival order (capped)
	dropped int
	changed chan struct{} // closed and replaced when lines grow or the process ends
	stdout  strings.Builder
	keepOut bool
	waitErr error
}

const maxLines = 20000

// procs is the set of children one harness run started.
type procs struct {
	mu   sync.Mutex
	list []*proc
}

// start runs path with args as a child named name. When keepStdout is set,
// the whole stdout is also kept for output().
func (ps *procs) start(name string, keepStdout bool, path string, args ...string) (*proc, error) {
	cmd := exec.Command(path, args...)
	ownGroup(cmd)
	cmd.Stdin = nil
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), changed: make(chan struct{}), keepOut: keepStdout}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	var readers sync.WaitGroup
	readers.Go(func() { p.scan(stdout, true) })
	readers.Go(func() { p.scan(stderr, false) })
	go func() { // ends when the process ends
		readers.Wait()
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) scan(r io.Reader, isStdout bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		p.mu.Lock()
		if isStdout && p.keepOut {
			p.stdout.WriteString(line)
			p.stdout.WriteByte('\n')
		}
		if len(p.lines) < maxLines {
			p.lines = append(p.lines, line)
		} else {
			p.dropped++
		}
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
	io.Copy(io.Discard, r) // a line longer than 1 MiB: keep draining
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitLine waits until a line of the process's output satisfies match, and
// returns it; it fails when the process ends first or after timeout.
func (p *proc) waitLine(ctx context.Context, timeout time.Duration, match func(string) bool) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	next := 0
	for {
		p.mu.Lock()
		for ; next < len(p.lines); next++ {
			if match(p.lines[next]) {
				l := p.lines[next]
				p.mu.Unlock()
				return l, nil
			}
		}
		ch := p.changed
		p.mu.Unlock()
		if p.exited() {
			return "", fmt.Errorf("%s exited (%v) before it was ready:\n%s", p.name, p.waitErr, p.tail(15))
		}
		select {
		case <-ch:
		case <-t.C:
			return "", fmt.Errorf("%s not ready after %s:\n%s", p.name, timeout, p.tail(15))
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// tail returns the last n output lines, indented, for error messages.
func (p *proc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.lines
	if len(l) > n {
		l = l[len(l)-n:]
	}
	if len(l) == 0 {
		return "    (no output)"
	}
	return "    " + strings.Join(l, "\n    ")
}

// wait waits for the process to end, killing it after timeout or when ctx
// ends. It returns the exit error, if any.
func (p *proc) wait(ctx context.Context, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.kill()
		return fmt.Errorf("%s %w after %s; killed:\n%s", p.name, errStillRunning, timeout, p.tail(10))
	case <-ctx.Done():
		p.kill()
		return ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.waitErr != nil {
		return fmt.Errorf("%s: %w:\n%s", p.name, p.waitErr, p.tailLocked(10))
	}
	return nil
}

func (p *proc) tailLocked(n int) string {
	l := p.lines
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return "    " + strings.Join(l, "\n    ")
}

// output returns the kept stdout.
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String()
}

// kill sends SIGKILL to the process group led by the child (its PID) and to
// the child itself, unless it has been reaped already, and waits for it.
func (p *proc) kill() {
	if p.exited() {
		return
	}
	pid := p.pid()
	killGroup(pid)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// errStillRunning is a load client that outlived its run.
var errStillRunning = errors.New("still running")

// killAll kills every child still running, newest first.
func (ps *procs) killAll() {
	ps.mu.Lock()
	list := append([]*proc(nil), ps.list...)
	ps.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i].kill()
	}
}

// rusageCPU is the CPU time (user+system) of an ended child.
func (p *proc) rusageCPU() float64 {
	select {
	case <-p.done:
	default:
		return 0
	}
	st := p.cmd.ProcessState
	if st == nil {
		return 0
	}
	return (st.UserTime() + st.SystemTime()).Seconds()
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// procCPU reads utime+stime of a live process, all threads, in seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

func parseStatCPU(s string) (float64, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short /proc/PID/stat")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed utime/stime in /proc/PID/stat")
	}
	return float64(ut+st) / clockTicks, nil
}

// procMem reads VmRSS and VmHWM of a live process, in KiB.
func procMem(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	return parseStatusMem(string(b))
}

func parseStatusMem(s string) (rss, hwm int64, err error) {
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("malformed %s line %q", k, line)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("malformed %s line %q", k, line)
		}
		if k == "VmRSS" {
			rss = n
		} else {
			hwm = n
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("no VmRSS in /proc/PID/status")
	}
	return rss, hwm, nil
}

// hostBusy reads the CPU seconds all CPUs of the host spent running tasks
// (user, nice, system, and steal by the hypervisor) since boot, from
// /proc/stat. Interrupt and softirq time are left out: with IRQ time
// accounting they hold the benchmark's own loopback packet processing,
// which no process is charged for.
func hostBusy() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseHostBusy(string(b))
}

func parseHostBusy(s string) (float64, error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, errors.New("malformed /proc/stat")
	}
	var busy uint64
	// user nice system idle iowait irq softirq steal: skip idle, iowait, irq, softirq.
	for i, v := range f[1:min(len(f), 9)] {
		if i >= 3 && i <= 6 {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, errors.New("malformed /proc/stat")
		}
		busy += n
	}
	return float64(busy) / clockTicks, nil
}
