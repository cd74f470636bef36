//go:build !linux

package config

// statFS measures the file system holding dir: on Linux only, where ferry
// runs; elsewhere ok is false and nothing is checked.
func statFS(dir string) (fs fsSpace, ok bool) { return fsSpace{}, false }
