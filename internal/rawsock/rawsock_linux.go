package rawsock

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// Wrap returns c with raw reads and writes if it is a *net.TCPConn, else c.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &conn{Conn: c, rc: rc}
	r.readFn, r.writeFn = r.readFD, r.writeFD
	return r
}

// conn is a TCP connection with raw reads and writes. A Read keeps its
// state in the r fields under rmu, a Write in the w fields under wmu, and
// the functions handed to rc are made once, so that neither allocates.
type conn struct {
	net.Conn
	rc syscall.RawConn

	rmu    sync.Mutex
	rp     []byte
	rn     int
	rerr   syscall.Errno
	readFn func(fd uintptr) bool

	wmu     sync.Mutex
	wp      []byte
	wn      int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool
}

func (c *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rp, c.rn, c.rerr = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerr
	c.rp = nil
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (c *conn) readFD(fd uintptr) bool {
	for {
		n, e := ReadFD(fd, c.rp)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait until readable
		case 0:
			c.rn = n
		default:
			c.rerr = e
		}
		return true
	}
}

func (c *conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wp, c.wn, c.werr = p, 0, 0
	err := c.rc.Write(c.writeFn)
	n, errno := c.wn, c.werr
	c.wp = nil
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

func (c *conn) writeFD(fd uintptr) bool {
	for c.wn < len(c.wp) {
		n, e := writeFD(fd, c.wp[c.wn:])
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait until writable
		case 0:
			c.wn += n
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// opError is err as net.Conn's Read and Write return it. Errors from rc
// come wrapped as net's "raw-read"/"raw-write"; they are unwrapped first.
func (c *conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
