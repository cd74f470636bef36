package config

import "golang.org/x/sys/unix"

// statFS measures the file system holding dir; ok is false if it cannot.
func statFS(dir string) (fs fsSpace, ok bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fsSpace{}, false
	}
	unit := int64(st.Frsize)
	if unit <= 0 {
		unit = int64(st.Bsize)
	}
	return fsSpace{total: int64(st.Blocks) * unit, avail: int64(st.Bavail) * unit}, true
}
