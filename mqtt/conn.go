package mqtt

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"golang.org/x/net/proxy"

	"github.com/ferry-edge/ferry/internal/rawsock"
)

// The connection to the broker. paho reads a packet's fixed header a byte at
// a time and writes a packet in two or three pieces; on a bare socket each
// is a system call. For TCP and TLS ingest dials the connection itself
// (autopaho's AttemptConnection) and gives paho a bufConn, whose reads come
// from a bufio.Reader and which writes each packet, or each batch of
// packets written at once, in one call; underneath, a pacedConn reads from
// the socket at most every readLinger while messages trickle in, so that a
// steady stream is read, stored and acknowledged several messages at a
// time, and reads and writes the TCP socket with raw system calls
// (internal/rawsock). WebSocket connections (ws://, wss://) are autopaho's
// own: their reads are buffered by the WebSocket library and each write is
// one frame.

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
		// A broker that requires a client certificate ferry does not
		// have refuses the connection: in the handshake (TLS 1.2) or
		// after it (TLS 1.3), with an alert or a reset that reads like a
		// network failure. When the broker asked for one, such a
		// failure is told as the refusal it likely is; a broker that
		// only asks (an optional client certificate) is served.
		var asked bool
		if len(tc.Certificates) == 0 && tc.GetClientCertificate == nil {
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				asked = true
				return &tls.Certificate{}, nil
			}
		}
		tlsConn := tls.Client(c, tc)
		if err := tlsConn.HandshakeContext(ctx); err != nil {
			raw.Close()
			if asked {
				err = fmt.Errorf("%w (%w)", errNoClientCertificate, err)
			}
			return nil, err
		}
		c = tlsConn
		if asked {
			c = &certAskedConn{Conn: tlsConn}
		}
	}
	bc := newBufConn(c, in.cfg.MaxPayload)
	if t, ok := in.sink.(tryAppender); ok {
		bc.direct = func(l *link, m *inbound) bool { return in.receive(l, m, t) }
	}
	bc.ping = in.ping
	bc.link = func() *link { return in.sess.current() }
	return bc, nil
}

// errNoClientCertificate: the broker asks for a client certificate and
// the configuration has none.
var errNoClientCertificate = errors.New("the broker asks for a client certificate (mutual TLS) and none is configured (mqtt.tls.cert_file, key_file)")

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
	return &pacedConn{Conn: rawsock.Wrap(c), lowat: newLowat(c)}
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
//
// bufConn reads most QoS 0 and 1 PUBLISH packets itself and hands them to
// ingest (direct) instead of passing them on to paho: paho allocates about
// 4.7 KB in 26 allocations to read one (a bytes.Buffer grown 512 bytes at
// a time for the packet and again for its topic, the payload read through
// io.ReadAll, its own copies of the message) and hands it to its router
// goroutine; bufConn parses it where it lies in the read buffer (see
// readPublish). QoS 2 messages, which paho's session tracks until their
// PUBREL, messages the sink has no room for, and anything unusual go
// through paho as before.
type bufConn struct {
	net.Conn
	r *bufio.Reader

	// Reads, on paho's reading goroutine (see Read).
	limit int    // largest payload passed on; 0: any
	rem   int    // bytes of the packet being read still to pass on
	stub  []byte // what is left of a stub being passed on instead of a packet
	// direct takes the messages bufConn reads itself (ingest's receive,
	// through the sink's TryAppend), which came on link(), and reports
	// whether it did; nil: bufConn reads none. A message the sink has no
	// room for goes through paho, whose reader goes on reading the
	// connection while ingest waits for the sink on paho's router
	// goroutine. ping hears of each message taken.
	direct func(*link, *inbound) bool
	link   func() *link
	ping   interface{ PacketReceived() }
	taken  atomic.Uint64 // messages direct took
	msg    inbound       // the message handed to direct, reused
	topics interner      // its topic
	// passed counts the PUBLISH packets passed on to paho that ingest has
	// not yet received from paho's router (onPublish decrements it once
	// it has, and session.PacketReceived for one paho's session keeps to
	// itself): while there are any, bufConn reads no message itself, so
	// that messages reach ingest in the order they came, one at a time.
	passed atomic.Int32
	// readSince is when the Read in progress began, or went back to
	// waiting for the broker (unix nanoseconds); 0 while paho is not
	// reading (it waits to hand a message on) and while Read hands one to
	// ingest itself: the keep-alive tells a silent broker from a reader
	// held up by the sink with it (see pinger).
	readSince atomic.Int64

	pkt sync.Mutex // Lock and Unlock: one writer's packet at a time

	mu      sync.Mutex // guards what follows; held while writing to Conn
	partial []byte     // the start of a packet whose end has not been written yet
	frame   framer
}

func newBufConn(c net.Conn, limit int) *bufConn {
	return &bufConn{Conn: c, r: bufio.NewReaderSize(c, readBufferSize), limit: limit}
}

func (c *bufConn) Lock()   { c.pkt.Lock() }
func (c *bufConn) Unlock() { c.pkt.Unlock() }

// Read passes the broker's packets on, whole, except the messages it
// hands to ingest itself (readPublish) and a PUBLISH whose payload is
// larger than limit: that one is read through (in pieces, never held
// whole) and a stub takes its place, which ingest acknowledges and counts
// (see stubSize). Read follows the packets' framing to tell where each
// begins: a packet's fixed header is peeked at, not copied, and the rest
// passes through as before.
func (c *bufConn) Read(p []byte) (int, error) {
	c.readSince.Store(time.Now().UnixNano())
	defer c.readSince.Store(0)
	if c.limit <= 0 && c.direct == nil {
		return c.r.Read(p)
	}
	if len(c.stub) == 0 && c.rem == 0 {
		if err := c.nextPacket(); err != nil {
			return 0, err
		}
	}
	if len(c.stub) > 0 {
		n := copy(p, c.stub)
		c.stub = c.stub[n:]
		return n, nil
	}
	if len(p) > c.rem {
		p = p[:c.rem]
	}
	n, err := c.r.Read(p)
	c.rem -= n
	return n, err
}

// waitingSince reports whether paho's reader is in a Read now, and since
// when.
func (c *bufConn) waitingSince() (time.Time, bool) {
	ns := c.readSince.Load()
	if ns == 0 {
		return time.Time{}, false
	}
	return time.Unix(0, ns), true
}

// nextPacket looks at the packets that come next. It hands the messages
// it can read itself to direct (readPublish), and stops at the first
// packet to pass on to paho: one to pass on as it is sets rem to its
// length; an oversized PUBLISH is read through and replaced by a stub.
func (c *bufConn) nextPacket() error {
	for {
		hdr, length, err := c.peekFixedHeader()
		if err != nil {
			return err
		}
		if done, err := c.readPublish(hdr, length); err != nil {
			return err
		} else if !done {
			return c.passOn(hdr, length)
		}
	}
}

// readPublish reads the next packet and hands it to direct if it is a
// message bufConn can read itself: a PUBLISH that parsePublish takes,
// whole in the read buffer, within the payload limit, on the connection
// paho has up, while paho has no message ingest has not received. done
// reports whether direct took it; if the sink had no room, the packet is
// left where it is, for paho.
func (c *bufConn) readPublish(hdr, length int) (done bool, err error) {
	if c.direct == nil || c.passed.Load() != 0 || hdr+length > c.r.Size() {
		return false, nil
	}
	b, err := c.r.Peek(1)
	if err != nil || b[0]>>4 != packets.PUBLISH {
		return false, nil
	}
	if b, err = c.r.Peek(hdr + length); err != nil {
		return false, err
	}
	l := c.link()
	if l == nil || l.w != c {
		return false, nil // paho is done with this connection, and reads no more
	}
	m := &c.msg
	if !parsePublish(b, hdr, m, &c.topics) || c.limit > 0 && len(m.payload) > c.limit {
		m.reset()
		return false, nil
	}
	c.readSince.Store(0) // not waiting for the broker while ingest takes it
	took := c.direct(l, m)
	c.readSince.Store(time.Now().UnixNano())
	if !took {
		return false, nil // the sink has no room: through paho
	}
	c.taken.Add(1)
	c.ping.PacketReceived()
	_, err = c.r.Discard(hdr + length)
	return true, err
}

// passOn prepares the packet that comes next, of hdr+length bytes, to be
// passed on to paho (see nextPacket).
func (c *bufConn) passOn(hdr, length int) error {
	c.rem = hdr + length
	if c.direct != nil {
		if b, err := c.r.Peek(1); err == nil && b[0]>>4 == packets.PUBLISH {
			c.passed.Add(1) // a stub too
		}
	}
	if c.limit <= 0 || length <= c.limit {
		return nil
	}
	b, err := c.r.Peek(hdr + 2)
	if err != nil || b[0]>>4 != packets.PUBLISH {
		return nil // not a PUBLISH, or too short for one: paho says what is wrong
	}
	first, qos := b[0], b[0]>>1&3
	// What follows the topic and packet identifier: properties and payload.
	fixed := 2 + int(binary.BigEndian.Uint16(b[hdr:]))
	if qos > 0 {
		fixed += 2
	}
	rest := length - fixed
	if rest <= c.limit || rest < 0 {
		return nil
	}
	// The properties' length, where the buffer can show it; else the
	// payload is taken to be all the rest.
	payload := rest
	if at := hdr + fixed; at+4 <= c.r.Size() {
		if b, err := c.r.Peek(min(at+4, hdr+length)); err == nil {
			if n, props, ok := uvarint(b[at:]); ok {
				payload = rest - n - props
			}
		}
	}
	if payload <= c.limit {
		return nil
	}
	// Too large: read the topic and packet identifier, skip the rest.
	c.rem = 0
	if _, err := c.r.Discard(hdr); err != nil {
		return err
	}
	head := make([]byte, fixed)
	if _, err := io.ReadFull(c.r, head); err != nil {
		return err
	}
	// In pieces: each one read is news from the broker, so the
	// keep-alive does not take a long message for a silent broker.
	for rest > 0 {
		n, err := c.r.Discard(min(rest, readBufferSize))
		rest -= n
		c.readSince.Store(time.Now().UnixNano())
		if err != nil {
			return err
		}
	}
	c.stub = appendStub(c.stub[:0], first, head, payload)
	return nil
}

// peekFixedHeader returns the length of the next packet's fixed header and
// its remaining length, without reading them.
func (c *bufConn) peekFixedHeader() (hdr, length int, err error) {
	for n := 2; n <= 5; n++ {
		b, err := c.r.Peek(n)
		if err != nil {
			return 0, 0, err
		}
		if b[n-1]&0x80 == 0 {
			_, length, _ := uvarint(b[1:n])
			return n, length, nil
		}
	}
	return 0, 0, errors.New("malformed packet: remaining length longer than 4 bytes")
}

// uvarint decodes an MQTT variable byte integer at the start of b: its
// length in bytes and its value; ok is false if b ends before it does.
func uvarint(b []byte) (n, v int, ok bool) {
	shift := 0
	for i := 0; i < len(b) && i < 4; i++ {
		v |= int(b[i]&0x7f) << shift
		shift += 7
		if b[i]&0x80 == 0 {
			return i + 1, v, true
		}
	}
	return 0, 0, false
}

// stubMarker is the property list of a stub: Subscription Identifier 0,
// which a broker may never send (MQTT 5.0 section 3.3.2.3.8: it is a
// protocol error), so no message can pass for a stub.
var stubMarker = []byte{2, packets.PropSubscriptionIdentifier, 0}

// appendStub appends the stub of an oversized PUBLISH to b: the same first
// byte (QoS, retain and DUP flags), topic and packet identifier (head, as
// the packet has them),
// the stub marker, and the payload's size in 8 bytes as payload.
func appendStub(b []byte, first byte, head []byte, payload int) []byte {
	length := len(head) + len(stubMarker) + 8
	b = append(b, first)
	for {
		d := byte(length & 0x7f)
		length >>= 7
		if length > 0 {
			b = append(b, d|0x80)
			continue
		}
		b = append(b, d)
		break
	}
	b = append(b, head...)
	b = append(b, stubMarker...)
	return binary.BigEndian.AppendUint64(b, uint64(payload))
}

// stubSize tells a stub from a message: for a stub it returns the size of
// the payload it stands for.
func stubSize(p *paho.Publish) (int, bool) {
	pp := p.Properties
	if pp == nil || pp.SubscriptionIdentifier == nil || *pp.SubscriptionIdentifier != 0 || len(p.Payload) != 8 {
		return 0, false
	}
	return int(binary.BigEndian.Uint64(p.Payload)), true
}

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

// certAskedConn is a TLS connection to a broker that asked for a client
// certificate ferry did not have: if the broker closes it before sending
// anything (TLS 1.3 refuses the certificate after the handshake), the
// read or write error says why. The close can reach ferry first as a reset
// on writing CONNECT, not only as a failed read of the CONNACK.
type certAskedConn struct {
	net.Conn
	read atomic.Bool // something was read: the broker took the connection (reads and writes come from different goroutines)
}

func (c *certAskedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.read.Store(true)
	}
	if err != nil && !c.read.Load() {
		err = fmt.Errorf("%w (%w)", errNoClientCertificate, err)
	}
	return n, err
}

func (c *certAskedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil && !c.read.Load() {
		err = fmt.Errorf("%w (%w)", errNoClientCertificate, err)
	}
	return n, err
}
