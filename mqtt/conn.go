package mqtt

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"golang.org/x/net/proxy"
)

// The connection to the broker. paho reads a packet's fixed header a byte at
// a time and writes a packet in two or three pieces; on a bare socket each
// is a system call. For TCP and TLS ingest dials the connection itself
// (autopaho's AttemptConnection) and gives paho a bufConn, whose reads come
// from a bufio.Reader and which writes each packet, or each batch of
// packets written at once, in one call; underneath, a pacedConn reads from
// the socket at most every readLinger while messages trickle in, so that a
// steady stream is read, stored and acknowledged several messages at a
// time. WebSocket connections (ws://, wss://) are autopaho's own: their
// reads are buffered by the WebSocket library and each write is one frame.

const (
	// readBufferSize is the bufio.Reader's size: what one read from the
	// connection can bring.
	readBufferSize = 16 << 10
	// readLinger is how long after a read that took everything the socket
	// had the next read waits, so that messages arriving one by one are read
	// several at a time: one wakeup, one read and (downstream) one commit
	// and one write of PUBACKs for all of them. It delays a message that
	// arrives in one read by at most this much (one that needs several
	// reads, a large one or over TLS, by this much per read; a TLS
	// handshake by this much per round). A read that fills its buffer is followed at once, so
	// it never limits throughput; after a quiet spell the first message is
	// read at once.
	readLinger = 10 * time.Millisecond
)

// dialsItself reports whether ingest dials URLs of this scheme itself; the
// others (ws, wss, and schemes autopaho refuses) are left to autopaho. The
// list is autopaho's.
func dialsItself(scheme string) bool {
	switch strings.ToLower(scheme) {
	case "mqtt", "tcp", "", "ssl", "tls", "mqtts", "mqtt+ssl", "tcps":
		return true
	}
	return false
}

func isTLS(scheme string) bool {
	switch strings.ToLower(scheme) {
	case "ssl", "tls", "mqtts", "mqtt+ssl", "tcps":
		return true
	}
	return false
}

// dialProxied dials as autopaho does: through the proxy that all_proxy
// names, if any (golang.org/x/net/proxy reads the environment, as it did
// inside autopaho), else directly.
func dialProxied(ctx context.Context, network, addr string) (net.Conn, error) {
	return proxy.Dial(ctx, network, addr)
}

// attemptConnection is autopaho's AttemptConnection for the schemes
// dialsItself accepts: one attempt, within the connect timeout (autopaho
// passes its outer context, without the timeout), TLS as autopaho's
// tls.Dialer does it (the host name from the URL unless the config names
// one).
func (in *Ingest) attemptConnection(ctx context.Context, cfg autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, in.cfg.ConnectTimeout)
	defer cancel()
	raw, err := in.dial(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	var c net.Conn = newPacedConn(raw)
	if isTLS(u.Scheme) {
		tc := cfg.TlsCfg.Clone()
		if tc == nil {
			tc = &tls.Config{}
		}
		if tc.ServerName == "" {
			tc.ServerName = u.Hostname()
		}
		tlsConn := tls.Client(c, tc)
		if err := tlsConn.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, err
		}
		c = tlsConn
	}
	return newBufConn(c), nil
}

// pacedConn paces reads from the socket: after a read that took everything
// there was (fewer bytes than asked for), the next read waits until
// readLinger has passed since it. Reads come from one goroutine at a time
// (paho's), as a net.Conn's reader must be for a bufio.Reader anyway.
//
// While it waits, each segment arriving would still wake Go's network
// poller, with no reader to hand it to; where it can (a TCP socket on
// Linux, see lowat) pacedConn raises the socket's receive low water mark
// for the wait, so that they do not.
type pacedConn struct {
	net.Conn
	lowat   *lowat    // nil: plain reads
	drained time.Time // when a read last took everything; zero after a full one
}

func newPacedConn(c net.Conn) *pacedConn {
	return &pacedConn{Conn: c, lowat: newLowat(c)}
}

func (c *pacedConn) Read(p []byte) (int, error) {
	if !c.drained.IsZero() {
		if d := readLinger - time.Since(c.drained); d > 0 {
			time.Sleep(d)
		}
	}
	n, err := c.lowat.read(c.Conn, p)
	if n < len(p) {
		c.drained = time.Now()
		c.lowat.raise()
	} else {
		c.drained = time.Time{}
	}
	return n, err
}

// bufConn is the connection paho uses. Reads come from a bufio.Reader.
// Writes are gathered per MQTT packet: paho writes a packet as a fixed
// header and one or more pieces, and bufConn writes them to the connection
// in one call once the packet is complete (so any error is the error of
// that Write). Several complete packets in one Write (ingest's batch of
// PUBACKs) are one call too. Nothing complete is ever held back, so there
// is nothing to flush on Close.
//
// bufConn is a sync.Locker, as paho asks of a connection several
// goroutines write to: packets.ControlPacket.WriteTo holds the lock while it
// writes a packet's pieces, and ingest holds it for its batch of PUBACKs.
type bufConn struct {
	net.Conn
	r *bufio.Reader

	pkt sync.Mutex // Lock and Unlock: one writer's packet at a time

	mu      sync.Mutex // guards what follows; held while writing to Conn
	partial []byte     // the start of a packet whose end has not been written yet
	frame   framer
}

func newBufConn(c net.Conn) *bufConn {
	return &bufConn{Conn: c, r: bufio.NewReaderSize(c, readBufferSize)}
}

func (c *bufConn) Lock()   { c.pkt.Lock() }
func (c *bufConn) Unlock() { c.pkt.Unlock() }

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// maxPartialCap bounds the capacity partial keeps between packets.
const maxPartialCap = 64 << 10

func (c *bufConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	whole := c.frame.scan(p) // p[:whole] ends a packet; the rest begins one
	if whole == 0 {
		c.partial = append(c.partial, p...)
		return len(p), nil
	}
	var err error
	if len(c.partial) == 0 {
		_, err = c.Conn.Write(p[:whole])
	} else {
		c.partial = append(c.partial, p[:whole]...)
		_, err = c.Conn.Write(c.partial)
		c.partial = c.partial[:0]
		if cap(c.partial) > maxPartialCap {
			c.partial = nil
		}
	}
	c.partial = append(c.partial, p[whole:]...)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// framer follows MQTT's framing through a stream of bytes: a packet is a
// type byte, its remaining length (one to four bytes of seven bits, the
// high bit set on all but the last) and that many bytes.
type framer struct {
	state framerState
	rem   int  // bytes of the current packet still to come (in its body)
	shift uint // of the next length byte
}

type framerState uint8

const (
	atType framerState = iota
	inLength
	inBody
)

// scan follows p and returns the length of its longest prefix that ends a
// packet (0 if none ends in p).
func (f *framer) scan(p []byte) int {
	end := 0
	for i := 0; i < len(p); {
		switch f.state {
		case atType:
			f.state, f.rem, f.shift = inLength, 0, 0
			i++
		case inLength:
			b := p[i]
			i++
			f.rem |= int(b&0x7f) << f.shift
			f.shift += 7
			// A fifth length byte is malformed (paho never writes one):
			// end the length there rather than shift past 28 bits.
			if b&0x80 == 0 || f.shift == 28 {
				f.state = inBody
				if f.rem == 0 {
					f.state, end = atType, i
				}
			}
		case inBody:
			k := min(f.rem, len(p)-i)
			i += k
			f.rem -= k
			if f.rem == 0 {
				f.state, end = atType, i
			}
		}
	}
	return end
}
