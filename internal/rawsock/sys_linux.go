//go:build linux && !race

package rawsock

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ReadFD reads from the socket fd into p (not empty) with one raw,
// non-blocking recvfrom: EAGAIN when nothing is there. For a caller that
// reads in a syscall.RawConn's Read, as Wrap's connections do.
func ReadFD(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), unix.MSG_DONTWAIT, 0, 0)
	return int(n), e
}

// writeFD writes p (not empty) to the socket fd with one raw, non-blocking
// sendto (no SIGPIPE on a closed connection: EPIPE).
func writeFD(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
	return int(n), e
}
