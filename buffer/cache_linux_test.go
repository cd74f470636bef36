package buffer

import (
	"os"

	"golang.org/x/sys/unix"
)

// dropCache asks the kernel to drop path's clean pages from the page cache,
// as if the file had been written long ago on a machine with less memory
// than the file.
func dropCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// allocated is how many bytes of disk path occupies (its blocks, not its
// length, which may include holes); ok is false where that is not known.
func allocated(path string) (n int64, ok bool) {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0, false
	}
	return st.Blocks * 512, true
}
