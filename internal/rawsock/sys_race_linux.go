//go:build linux && race

package rawsock

import "syscall"

// Under the race detector reads and writes go through the syscall
// package, whose Read and Write tell the detector what a socket orders
// (data written on one end happens before it is read on the other); a raw
// call does not, and tests that run both ends in one process would report
// races that are not. The socket is non-blocking, so these return EAGAIN
// as the raw calls do.

// ReadFD reads from the socket fd into p (not empty): EAGAIN when nothing
// is there.
func ReadFD(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return max(n, 0), errno(err)
}

func writeFD(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return max(n, 0), errno(err)
}

func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EIO
}
