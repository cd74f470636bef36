package mqtt

import (
	"bytes"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/ferry-edge/ferry/internal/testenv"
)

// recordConn is a net.Conn that records each Write and serves reads from a
// buffer, counting the Read calls.
type recordConn struct {
	net.Conn // nil: only what is below is used
	mu       sync.Mutex
	writes   [][]byte
	in       bytes.Buffer
	reads    int
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes = append(c.writes, slices.Clone(p))
	return len(p), nil
}

func (c *recordConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	return c.in.Read(p)
}

func (c *recordConn) taken() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.writes
	c.writes = nil
	return w
}

// wire returns the bytes of packets as paho writes them to a bare socket.
func wire(t *testing.T, pkts ...packets.Packet) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, p := range pkts {
		if _, err := p.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// The framer finds where packets end however the stream is cut.
func TestFramerFindsPacketEnds(t *testing.T) {
	big := make([]byte, 300) // a remaining length of two bytes
	pkts := []packets.Packet{
		packets.NewControlPacket(packets.PINGREQ).Content, // empty body
		&packets.Puback{PacketID: 7, Properties: &packets.Properties{}},
		&packets.Subscribe{PacketID: 8, Subscriptions: []packets.SubOptions{{Topic: "sensors/#", QoS: 1}}, Properties: &packets.Properties{}},
		&packets.Publish{Topic: "a/b", QoS: 1, PacketID: 9, Payload: big, Properties: &packets.Properties{}},
		&packets.Disconnect{Properties: &packets.Properties{}},
	}
	var stream []byte
	var ends []int // offsets where a packet ends
	for _, p := range pkts {
		stream = append(stream, wire(t, p)...)
		ends = append(ends, len(stream))
	}
	// feed scans pieces in turn and returns the ends scan reports, as
	// offsets in the stream.
	feed := func(pieces ...[]byte) []int {
		t.Helper()
		var f framer
		var got []int
		off := 0
		for _, p := range pieces {
			if e := f.scan(p); e > 0 {
				got = append(got, off+e)
			}
			off += len(p)
		}
		if f.state != atType {
			t.Fatalf("framer in state %d at the end of the stream", f.state)
		}
		return got
	}

	var bytewise [][]byte
	for i := range stream {
		bytewise = append(bytewise, stream[i:i+1])
	}
	if got := feed(bytewise...); !slices.Equal(got, ends) {
		t.Fatalf("a byte at a time: ends %v, want %v", got, ends)
	}
	for cut := 0; cut <= len(stream); cut++ {
		var want []int // the last end in each piece
		for i := len(ends) - 1; i >= 0; i-- {
			if ends[i] <= cut {
				want = append(want, ends[i])
				break
			}
		}
		if cut < len(stream) {
			want = append(want, len(stream))
		}
		if got := feed(stream[:cut], stream[cut:]); !slices.Equal(got, want) {
			t.Fatalf("cut at %d: ends %v, want %v", cut, got, want)
		}
	}
}

// Each packet paho writes (in pieces, under the connection's lock) reaches
// the connection in one write, at once; a batch of PUBACKs written together
// is one write too, in order with what paho writes.
func TestBufConnWritesWholePackets(t *testing.T) {
	rc := &recordConn{}
	c := newBufConn(rc, 0)

	ping := packets.NewControlPacket(packets.PINGREQ)
	sub := &packets.Subscribe{PacketID: 3, Subscriptions: []packets.SubOptions{{Topic: "sensors/#", QoS: 1}}, Properties: &packets.Properties{}}
	for _, p := range []packets.Packet{ping.Content, sub} {
		// ControlPacket.WriteTo writes the fixed header and the body
		// separately, holding c's lock (c is a sync.Locker).
		if p == ping.Content {
			if _, err := ping.WriteTo(c); err != nil {
				t.Fatal(err)
			}
		} else if _, err := p.WriteTo(c); err != nil {
			t.Fatal(err)
		}
		w := rc.taken()
		if len(w) != 1 || !bytes.Equal(w[0], wire(t, p)) {
			t.Fatalf("%T reached the connection as %d writes %x, want one: %x", p, len(w), w, wire(t, p))
		}
	}

	var acks []byte
	var want []byte
	for id := uint16(1); id <= 50; id++ {
		acks = appendPuback(acks, id)
		want = append(want, wire(t, &packets.Puback{PacketID: id, Properties: &packets.Properties{}})...)
	}
	if !bytes.Equal(acks, want) {
		t.Fatalf("appendPuback wrote %x, paho writes %x", acks, want)
	}
	if err := (&link{w: c}).write(acks); err != nil {
		t.Fatal(err)
	}
	if w := rc.taken(); len(w) != 1 || !bytes.Equal(w[0], want) {
		t.Fatalf("50 PUBACKs reached the connection as %d writes, want one", len(w))
	}

	// A write that ends in the middle of a packet sends what is whole and
	// keeps the rest for the write that completes it.
	both := append(appendPuback(nil, 60), wire(t, ping.Content)...)
	if _, err := c.Write(both[:len(both)-1]); err != nil {
		t.Fatal(err)
	}
	if w := rc.taken(); len(w) != 1 || !bytes.Equal(w[0], both[:6]) {
		t.Fatalf("wrote %x, want the whole PUBACK %x only", w, both[:6])
	}
	if _, err := c.Write(both[len(both)-1:]); err != nil {
		t.Fatal(err)
	}
	if w := rc.taken(); len(w) != 1 || !bytes.Equal(w[0], both[6:]) {
		t.Fatalf("wrote %x, want the rest %x", w, both[6:])
	}
}

// paho reads a packet's fixed header a byte at a time; through bufConn many
// packets take one read from the connection.
func TestBufConnReadsBuffered(t *testing.T) {
	rc := &recordConn{}
	for id := uint16(1); id <= 100; id++ {
		p := &packets.Publish{Topic: "sensors/dev-01/telemetry", QoS: 1, PacketID: id, Payload: []byte(`{"t":21.5}`), Properties: &packets.Properties{}}
		rc.in.Write(wire(t, p))
	}
	c := newBufConn(rc, 0)
	for id := uint16(1); id <= 100; id++ {
		cp, err := packets.ReadPacket(c)
		if err != nil {
			t.Fatal(err)
		}
		if got := cp.Content.(*packets.Publish).PacketID; got != id {
			t.Fatalf("packet %d read as %d", id, got)
		}
	}
	if rc.reads > 2 {
		t.Fatalf("100 packets took %d reads from the connection", rc.reads)
	}
	if _, err := packets.ReadPacket(c); err != io.EOF {
		t.Fatalf("after the last packet: %v, want EOF", err)
	}
}

// After a read that took everything, the next read waits out readLinger
// and then takes what came meanwhile in one read; a message that comes
// alone after that is read as soon as it comes, although the socket's low
// water mark was raised for the wait.
func TestPacedConnLingersAndStillReadsALoneByte(t *testing.T) {
	client, server := testenv.TCPPair(t)
	pc := newPacedConn(client)
	buf := make([]byte, 64)
	write := func(s string) {
		t.Helper()
		if _, err := server.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}

	write("a")
	if n, err := pc.Read(buf); err != nil || string(buf[:n]) != "a" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	first := time.Now()
	for _, s := range []string{"b", "c", "d"} {
		write(s)
		time.Sleep(time.Millisecond)
	}
	n, err := pc.Read(buf)
	if err != nil || string(buf[:n]) != "bcd" {
		t.Fatalf("read %q, %v; want the three bytes written during the wait in one read", buf[:n], err)
	}
	if waited := time.Since(first); waited < readLinger {
		t.Fatalf("second read came %v after the first, want at least %v", waited, readLinger)
	}

	// Nothing comes during the wait; then one byte, alone.
	got := make(chan string, 1)
	go func() {
		n, err := pc.Read(buf)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(buf[:n])
	}()
	time.Sleep(3 * readLinger)
	write("e")
	select {
	case s := <-got:
		if s != "e" {
			t.Fatalf("read %q, want %q", s, "e")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a lone byte was not read: the low water mark stayed up while the reader waited")
	}

	// A read that fills the buffer is followed at once.
	write(string(bytes.Repeat([]byte{'x'}, 2*len(buf))))
	time.Sleep(10 * time.Millisecond)
	if n, err := pc.Read(buf); err != nil || n != len(buf) {
		t.Fatalf("read %d, %v", n, err)
	}
	start := time.Now()
	if n, err := pc.Read(buf); err != nil || n != len(buf) {
		t.Fatalf("read %d, %v", n, err)
	}
	if d := time.Since(start); d >= readLinger {
		t.Fatalf("a read after a full one waited %v", d)
	}

	server.Close()
	if _, err := pc.Read(buf); err != io.EOF {
		t.Fatalf("read after the peer closed: %v, want EOF", err)
	}
}
