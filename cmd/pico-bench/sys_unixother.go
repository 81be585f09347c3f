//go:build unix && !linux

package main

import "syscall"

// parentDeathSignal: only Linux has one; the cleanups still kill every
// child.
func parentDeathSignal(*syscall.SysProcAttr) {}
