//go:build unix

package main

import (
	"os/exec"
	"syscall"
)

// ownGroup makes cmd's process lead a process group of its own, which
// killGroup ends with all its children; on Linux it also dies with
// pico-bench (parentDeathSignal).
func ownGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	parentDeathSignal(cmd.SysProcAttr)
}

// killGroup sends SIGKILL to the process group led by pid and to pid.
func killGroup(pid int) {
	syscall.Kill(-pid, syscall.SIGKILL)
	syscall.Kill(pid, syscall.SIGKILL)
}

// terminate asks pid to stop, as an operator would: SIGTERM.
func terminate(pid int) { syscall.Kill(pid, syscall.SIGTERM) }
