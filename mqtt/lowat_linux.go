package mqtt

import (
	"io"
	"net"
	"os"
	"syscall"

	"github.com/ferry-edge/ferry/internal/rawsock"
)

// lowat raises a TCP socket's receive low water mark (SO_RCVLOWAT) while
// pacedConn waits between reads, and lowers it to one byte before the
// reader waits for data. Linux tells epoll a socket is readable only once
// that many bytes are there (or its receive memory runs short), so the
// segments that arrive during the wait do not wake Go's network poller; a
// read takes whatever is there, mark or not.
type lowat struct {
	rc     syscall.RawConn
	raised bool // the mark is high: lower it before waiting for data

	// The read in progress, for readFD, and the functions handed to rc,
	// made once so that a read allocates nothing.
	p       []byte
	n       int
	err     error
	readFn  func(fd uintptr) bool
	raiseFn func(fd uintptr)
}

// lowatHigh is the raised mark: a full read buffer.
const lowatHigh = readBufferSize

// newLowat returns the lowat of c, nil if c is not a TCP socket.
func newLowat(c net.Conn) *lowat {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	l := &lowat{rc: rc}
	l.readFn, l.raiseFn = l.readFD, l.raiseFD
	return l
}

// raise raises the mark, if it is not raised yet.
func (l *lowat) raise() {
	if l == nil || l.raised {
		return
	}
	_ = l.rc.Control(l.raiseFn)
}

func (l *lowat) raiseFD(fd uintptr) {
	l.raised = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, lowatHigh) == nil
}

// read reads from c as c.Read does, lowering the mark before it waits for
// data.
func (l *lowat) read(c net.Conn, p []byte) (int, error) {
	if l == nil {
		return c.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	l.p, l.n, l.err = p, 0, nil
	err := l.rc.Read(l.readFn)
	n, rerr := l.n, l.err
	l.p, l.err = nil, nil
	switch {
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	case rerr != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// readFD is the read itself, called by rc.Read until it returns true;
// returning false waits until the socket is readable.
func (l *lowat) readFD(fd uintptr) bool {
	for {
		n, errno := rawsock.ReadFD(fd, l.p) // a raw call, as the connection's writes (see newPacedConn)
		switch {
		case errno == syscall.EINTR:
			continue
		case errno == 0:
			l.n = n
			return true
		case errno != syscall.EAGAIN:
			l.err = errno
			return true
		case !l.raised:
			return false
		}
		// Nothing there and the mark is high: lower it, then read once
		// more for what came while it was high, before waiting.
		if syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, 1) != nil {
			return false
		}
		l.raised = false
	}
}
