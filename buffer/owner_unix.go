//go:build unix

package buffer

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// keepOwner gives the file at path the owner of the file fi describes, when
// this process runs as root and they differ: `sudo ferry buffer compact`
// must not leave the service's buffer owned by root, where ferry's own user
// could no longer open it.
func keepOwner(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || os.Geteuid() != 0 || int(st.Uid) == 0 && int(st.Gid) == 0 {
		return nil
	}
	if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("keep the owner of the buffer file: %w", err)
	}
	return nil
}
