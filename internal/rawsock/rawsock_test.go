package rawsock

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// pair returns a wrapped client connection and the server's end of it, on
// loopback.
func pair(t *testing.T) (c, srv net.Conn) {
	t.Helper()
	raw, srv := testenv.TCPPair(t)
	return Wrap(raw), srv
}

func TestWrapOnlyLinuxTCP(t *testing.T) {
	c, _ := pair(t)
	if _, tcp := c.(*net.TCPConn); tcp == (runtime.GOOS == "linux") {
		t.Errorf("Wrap of a TCP connection on %s returned a %T", runtime.GOOS, c)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Wrap(a) != a {
		t.Error("Wrap of a pipe is not the pipe itself")
	}
}

// A write larger than the socket buffers waits for the reader (EAGAIN, then
// the poller), and every byte arrives, in order, both ways.
func TestLargeWritesBothWays(t *testing.T) {
	c, srv := pair(t)
	want := make([]byte, 8<<20)
	rand.Read(want)
	for _, dir := range []struct {
		name string
		w, r net.Conn
	}{{"wrapped writes", c, srv}, {"wrapped reads", srv, c}} {
		errc := make(chan error, 1)
		go func() {
			n, err := dir.w.Write(want)
			if err == nil && n != len(want) {
				err = io.ErrShortWrite
			}
			errc <- err
		}()
		got := make([]byte, len(want))
		if _, err := io.ReadFull(dir.r, got); err != nil {
			t.Fatalf("%s: read: %v", dir.name, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("%s: write: %v", dir.name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: the bytes read differ from those written", dir.name)
		}
	}
}

func TestReadDeadline(t *testing.T) {
	c, _ := pair(t)
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	n, err := c.Read(make([]byte, 10))
	var ne net.Error
	if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %d, %v; want 0 and a timeout", n, err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Errorf("error %v (%T) is not a read OpError", err, err)
	}
}

func TestWriteDeadline(t *testing.T) {
	c, _ := pair(t)
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	// Nobody reads: the socket buffers fill and the write waits until its
	// deadline, having written part.
	n, err := c.Write(make([]byte, 64<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) || n == 0 || n == 64<<20 {
		t.Fatalf("write past the deadline: %d bytes, %v; want some bytes and a timeout", n, err)
	}
}

func TestEOFAndClose(t *testing.T) {
	c, srv := pair(t)
	srv.Write([]byte("last"))
	srv.Close()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "last" {
		t.Fatalf("read to the peer's close: %q, %v; want \"last\" and EOF", got, err)
	}
	c.Close()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: %v, want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Close: %v, want net.ErrClosed", err)
	}
}

func TestWriteToAResetPeer(t *testing.T) {
	c, srv := pair(t)
	srv.(*net.TCPConn).SetLinger(0)
	srv.Close() // RST
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = c.Write([]byte("x"))
		time.Sleep(time.Millisecond)
	}
	var se *os.SyscallError
	if !errors.As(err, &se) || se.Syscall != "write" {
		t.Fatalf("write to a reset connection: %v, want a write syscall error", err)
	}
}

// Reads, and writes, from several goroutines at once: each call gets its
// own bytes (the bug to catch: state of one call shared with another).
func TestConcurrentReadsAndWrites(t *testing.T) {
	c, srv := pair(t)
	const size = 4 << 20

	// Two writers on c: whole writes, one after the other, nothing lost.
	errc := make(chan error, 2)
	for _, v := range []byte{'a', 'b'} {
		go func() {
			n, err := c.Write(bytes.Repeat([]byte{v}, size))
			if err == nil && n != size {
				err = io.ErrShortWrite
			}
			errc <- err
		}()
	}
	got := make([]byte, 2*size)
	srv.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := io.ReadFull(srv, got); err != nil {
		t.Fatalf("two concurrent writes of %d bytes: %d arrived: %v", size, n, err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	first, second := got[0], got[size]
	if first == second || !bytes.Equal(got[:size], bytes.Repeat([]byte{first}, size)) || !bytes.Equal(got[size:], bytes.Repeat([]byte{second}, size)) {
		t.Fatal("two concurrent writes interleaved or lost bytes")
	}

	// Two readers on c: every byte read lands in the reader's own buffer.
	go srv.Write(bytes.Repeat([]byte{'z'}, 2*size))
	total := make(chan int, 2)
	var left atomic.Int64
	left.Store(2 * size)
	giveUp := time.Now().Add(20 * time.Second)
	for range 2 {
		go func() {
			buf, sum := make([]byte, 32<<10), 0
			for left.Load() > 0 && time.Now().Before(giveUp) {
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				n, err := c.Read(buf)
				if n > 0 && !bytes.Equal(buf[:n], bytes.Repeat([]byte{'z'}, n)) {
					t.Error("a read's buffer does not hold what it read")
				}
				sum += n
				left.Add(-int64(n))
				if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Error(err)
					break
				}
			}
			total <- sum
		}()
	}
	if sum := <-total + <-total; sum != 2*size {
		t.Fatalf("two concurrent readers read %d bytes of %d", sum, 2*size)
	}
}
