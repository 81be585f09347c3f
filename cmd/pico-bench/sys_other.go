//go:build !unix

package main

import (
	"os"
	"os/exec"
)

// ownGroup: without process groups, killGroup ends the child alone.
func ownGroup(*exec.Cmd) {}

// killGroup kills pid.
func killGroup(pid int) {
	if p, err := os.FindProcess(pid); err == nil {
		p.Kill()
	}
}

// terminate kills pid: there is no SIGTERM to send here.
func terminate(pid int) { killGroup(pid) }
