package config

import (
	"fmt"
	"os"
	"path/filepath"
)

// fsSpace is what the file system holding a directory has, in bytes.
type fsSpace struct {
	total int64 // the file system's size
	avail int64 // free to an unprivileged process (ferry's user)
}

// checkSpace warns, in c.Warnings, when the buffer's bounds do not fit on
// the file system that holds (or will hold) buffer.path.
func checkSpace(c *Config, src *source) {
	dir := filepath.Dir(c.Buffer.Path)
	var fs fsSpace
	ok := false
	// The directory may not exist yet (systemd creates StateDirectory):
	// measure the file system of its nearest ancestor that does.
	for d := dir; !ok; d = filepath.Dir(d) {
		if fs, ok = statFS(d); ok || d == filepath.Dir(d) {
			break
		}
	}
	if !ok {
		return
	}
	var file int64
	if fi, err := os.Stat(c.Buffer.Path); err == nil && fi.Mode().IsRegular() {
		file = fi.Size()
	}
	if w := spaceWarning(c.Buffer, fs, file); w != "" {
		c.Warnings = append(c.Warnings, src.errorAt("buffer.max_bytes", "%s", w).Error())
	}
}

// spaceWarning says why the buffer b, whose file is now file bytes, cannot
// reach its bounds on the file system fs, or "" if it can. The file holds up
// to max_bytes of records plus max_dead_letter_bytes of dead letters.
func spaceWarning(b Buffer, fs fsSpace, file int64) string {
	if b.MaxBytes <= 0 {
		return "" // no bound: the operator chose to let it fill the disk
	}
	need := int64(b.MaxBytes)
	what := fmt.Sprintf("max_bytes %v", b.MaxBytes)
	if dl := b.DeadLetterLimit(); dl > 0 {
		need += dl
		what += fmt.Sprintf(" plus max_dead_letter_bytes %v", b.MaxDeadLetterBytes)
	}
	const consequence = "the file system fills before max_bytes applies, and then ferry can store no message"
	dir := filepath.Dir(b.Path)
	switch {
	case need > fs.total:
		return fmt.Sprintf("the buffer may take %s (%s), more than the whole file system holding %s (%s): %s; lower max_bytes",
			approxSize(need), what, dir, approxSize(fs.total), consequence)
	case need > fs.avail+file:
		return fmt.Sprintf("the buffer may take %s (%s), more than the %s it can have on the file system holding %s (%s free plus the buffer file's %s): %s; lower max_bytes or free space",
			approxSize(need), what, approxSize(fs.avail+file), dir, approxSize(fs.avail), approxSize(file), consequence)
	}
	return ""
}

// approxSize formats n to a tenth of the largest binary unit it reaches:
// 1.4GiB.
func approxSize(n int64) string {
	for _, u := range []struct {
		name string
		n    int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.n {
			return fmt.Sprintf("%.1f%s", float64(n)/float64(u.n), u.name)
		}
	}
	return fmt.Sprintf("%dB", n)
}
