package mqtt

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// fakeBroker is a broker that ignores the Maximum Packet Size ferry asks
// for. It accepts one connection and lets the test write packets to it and
// read what ferry sends.
type fakeBroker struct {
	ln   net.Listener
	conn net.Conn
	r    *bufio.Reader
}

func newFakeBroker(t *testing.T) *fakeBroker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBroker{ln: ln}
	t.Cleanup(func() {
		ln.Close()
		if b.conn != nil {
			b.conn.Close()
		}
	})
	return b
}

// accept takes ferry's connection and answers CONNECT and SUBSCRIBE; it
// returns CONNECT's properties.
func (b *fakeBroker) accept(t *testing.T) *packets.Properties {
	t.Helper()
	c, err := b.ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	b.conn, b.r = c, bufio.NewReader(c)
	cp := b.read(t, packets.CONNECT).Content.(*packets.Connect)
	b.write(t, &packets.Connack{Properties: &packets.Properties{}})
	sub := b.read(t, packets.SUBSCRIBE).Content.(*packets.Subscribe)
	b.write(t, &packets.Suback{PacketID: sub.PacketID, Reasons: []byte{2}, Properties: &packets.Properties{}})
	return cp.Properties
}

// read returns the next packet of type typ ferry sends, skipping PINGREQs.
func (b *fakeBroker) read(t *testing.T, typ byte) *packets.ControlPacket {
	t.Helper()
	b.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		cp, err := packets.ReadPacket(b.r)
		if err != nil {
			t.Fatalf("reading ferry's packet of type %d: %v", typ, err)
		}
		if cp.Type == packets.PINGREQ {
			b.write(t, packets.NewControlPacket(packets.PINGRESP))
			continue
		}
		if cp.Type != typ {
			t.Fatalf("ferry sent %s, want type %d", cp.PacketType(), typ)
		}
		return cp
	}
}

func (b *fakeBroker) write(t *testing.T, p io.WriterTo) {
	t.Helper()
	if _, err := p.WriteTo(b.conn); err != nil {
		t.Fatal(err)
	}
}

// publish writes a PUBLISH with a payload of size bytes, streamed in
// pieces so the test holds no large payload either.
func (b *fakeBroker) publish(t *testing.T, topic string, qos byte, id uint16, size int) {
	t.Helper()
	var vh []byte
	vh = binary.BigEndian.AppendUint16(vh, uint16(len(topic)))
	vh = append(vh, topic...)
	if qos > 0 {
		vh = binary.BigEndian.AppendUint16(vh, id)
	}
	vh = append(vh, 0) // no properties
	hdr := []byte{packets.PUBLISH<<4 | qos<<1}
	for l := len(vh) + size; ; {
		d := byte(l & 0x7f)
		if l >>= 7; l > 0 {
			hdr = append(hdr, d|0x80)
			continue
		}
		hdr = append(hdr, d)
		break
	}
	if _, err := b.conn.Write(append(hdr, vh...)); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 32<<10)
	for left := size; left > 0; {
		n := min(left, len(chunk))
		if _, err := b.conn.Write(chunk[:n]); err != nil {
			t.Fatal(err)
		}
		left -= n
	}
}

// A broker that ignores ferry's Maximum Packet Size sends messages larger
// than mqtt.max_payload_bytes: each is acknowledged in its turn, counted and
// dropped, read through without being held whole, and the messages around
// it are stored as usual.
func TestOversizedMessagesAreAcknowledgedAndDropped(t *testing.T) {
	fb := newFakeBroker(t)
	u, _ := url.Parse("tcp://" + fb.ln.Addr().String())
	const limit = 64 << 10
	sink := &topicSink{}
	in, err := New(Config{URL: u, ClientID: "ferry-test", MaxPayload: limit, Subscriptions: []Subscription{{Filter: "#", QoS: 2}}}, sink)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	props := fb.accept(t)
	if props.MaximumPacketSize == nil || *props.MaximumPacketSize != limit+packetHeadroom {
		t.Errorf("CONNECT's Maximum Packet Size %v, want %d", props.MaximumPacketSize, limit+packetHeadroom)
	}
	waitFor(t, 5*time.Second, "the subscription", func() bool { return in.Stats().Subscribed })

	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	const big = 16 << 20
	fb.publish(t, "big/a", 1, 1, big)
	fb.publish(t, "small/b", 1, 2, 100)
	fb.publish(t, "big/c", 0, 0, big)
	fb.publish(t, "big/d", 2, 3, limit+1)
	fb.publish(t, "small/e", 1, 4, limit) // at the limit: taken
	for _, want := range []struct {
		typ byte
		id  uint16
	}{{packets.PUBACK, 1}, {packets.PUBACK, 2}, {packets.PUBREC, 3}, {packets.PUBACK, 4}} {
		cp := fb.read(t, want.typ)
		if id := cp.PacketID(); id != want.id {
			t.Fatalf("%s for packet %d, want %d", cp.PacketType(), id, want.id)
		}
	}
	fb.write(t, &packets.Pubrel{PacketID: 3, Properties: &packets.Properties{}})
	fb.read(t, packets.PUBCOMP)
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > big/4 {
		t.Errorf("%d bytes allocated while two messages of %d bytes went by", alloc, big)
	}
	if got := sink.got(); !slices.Equal(got, []string{"small/b", "small/e"}) {
		t.Errorf("records %q, want small/b and small/e", got)
	}
	if st := in.Stats(); st.DroppedTooLarge != 3 || st.Received != 2 || st.Acknowledged != 4 {
		t.Errorf("stats %+v, want 3 dropped, 2 received, 4 acknowledged", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Mosquitto honours the Maximum Packet Size ferry advertises: a message
// larger than it is not sent to ferry (Mosquitto drops it for ferry as if
// delivered), and the stream goes on.
func TestBrokerKeepsOversizedMessagesBack(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt v2.7.9 ignores the client's Maximum Packet Size")
	u, _ := url.Parse(broker.URL())
	const limit = 1 << 10
	sink := &topicSink{}
	in, done, cancel := startIngestWith(t, Config{URL: u, MaxPayload: limit}, sink, nil)
	defer cancel()
	pub := publisher(t, broker.Addr)
	publish(t, pub, "sensors/big", 1, strings.Repeat("x", limit+packetHeadroom+1))
	publish(t, pub, "sensors/small", 1, strings.Repeat("x", limit))
	waitFor(t, 10*time.Second, "the small message", func() bool { return sink.count("sensors/small") == 1 })
	if got := sink.got(); !slices.Equal(got, []string{"sensors/small"}) {
		t.Errorf("records %q, want sensors/small only", got)
	}
	stopIngest(t, done, cancel)
	if n := in.Stats().DroppedTooLarge; n != 0 {
		t.Errorf("DroppedTooLarge %d: the broker sent the large message", n)
	}
}
