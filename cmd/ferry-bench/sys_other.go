//go:build !linux

package main

import (
	"os"
	"os/exec"
)

// dieWithParent is a no-op outside Linux.
func dieWithParent(*exec.Cmd) {}

// fsType is not known outside Linux.
func fsType(string) string { return "unknown" }

// syncData flushes f to storage.
func syncData(f *os.File) error { return f.Sync() }
