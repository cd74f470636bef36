package mqtt

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/testenv"
)

// encodePublish is p as paho writes it.
func encodePublish(t testing.TB, p *packets.Publish) []byte {
	t.Helper()
	var b bytes.Buffer
	cp := &packets.ControlPacket{FixedHeader: packets.FixedHeader{Type: packets.PUBLISH}, Content: p}
	if _, err := cp.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func fixedHeaderLen(t testing.TB, b []byte) int {
	t.Helper()
	for n := 2; n <= 5 && n <= len(b); n++ {
		if b[n-1]&0x80 == 0 {
			return n
		}
	}
	t.Fatalf("no fixed header in % x", b)
	return 0
}

// samePublish checks that what parsePublish made of a packet is what paho
// reads from it, as onPublish would take it.
func samePublish(t *testing.T, b []byte, m *inbound) {
	t.Helper()
	cp, err := packets.ReadPacket(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("parsePublish took % x, which paho refuses: %v", b, err)
	}
	pp := paho.PublishFromPacketPublish(cp.Content.(*packets.Publish))
	want := inbound{topic: pp.Topic, payload: pp.Payload, id: pp.PacketID, qos: pp.QoS}
	want.rec.Retain = pp.Retain
	if p := pp.Properties; p != nil {
		want.rec.ContentType, want.rec.ResponseTopic, want.rec.CorrelationData = p.ContentType, p.ResponseTopic, p.CorrelationData
		want.rec.PayloadUTF8 = p.PayloadFormat != nil && *p.PayloadFormat == 1
		for _, u := range p.User {
			want.rec.UserProperties = append(want.rec.UserProperties, buffer.Property{Key: u.Key, Value: u.Value})
		}
	}
	if m.topic != want.topic || !bytes.Equal(m.payload, want.payload) || m.id != want.id || m.qos != want.qos || m.stub ||
		m.rec.Retain != want.rec.Retain || m.rec.ContentType != want.rec.ContentType || m.rec.ResponseTopic != want.rec.ResponseTopic ||
		!bytes.Equal(m.rec.CorrelationData, want.rec.CorrelationData) || m.rec.PayloadUTF8 != want.rec.PayloadUTF8 ||
		!slices.Equal(m.rec.UserProperties, want.rec.UserProperties) {
		t.Fatalf("packet % x:\nparsePublish %+v\npaho         %+v", b, *m, want)
	}
}

func publishSeeds() []*packets.Publish {
	one, expiry, subID := byte(1), uint32(60), 7
	return []*packets.Publish{
		{Topic: "sensors/dev-01/telemetry", QoS: 1, PacketID: 9, Payload: []byte(`{"t":21.5}`), Properties: &packets.Properties{}},
		{Topic: "a", QoS: 0, Retain: true, Payload: nil, Properties: &packets.Properties{}},
		{Topic: "sensors/b", QoS: 1, PacketID: 65535, Duplicate: true, Payload: []byte{0, 1, 2}, Properties: &packets.Properties{
			ContentType: "application/json", ResponseTopic: "replies/b", CorrelationData: []byte{1, 2},
			PayloadFormat: &one, MessageExpiry: &expiry, SubscriptionIdentifier: &subID,
			User: []packets.User{{Key: "unit", Value: "C"}, {Key: "unit", Value: "F"}, {Key: "", Value: ""}},
		}},
	}
}

func TestParsePublishReadsAsPaho(t *testing.T) {
	for _, p := range publishSeeds() {
		b := encodePublish(t, p)
		var m inbound
		if !parsePublish(b, fixedHeaderLen(t, b), &m, &interner{}) {
			t.Fatalf("parsePublish left % x to paho", b)
		}
		samePublish(t, b, &m)
	}
}

// What parsePublish does not take goes through paho as before: QoS 2
// (paho's session tracks it), a topic alias, a stub, and what is
// malformed or doubtful, so that paho says what is wrong with it.
func TestParsePublishLeavesToPaho(t *testing.T) {
	alias, zero, two := uint16(3), 0, byte(2)
	cases := map[string][]byte{
		"QoS 2":                   encodePublish(t, &packets.Publish{Topic: "a", QoS: 2, PacketID: 1, Properties: &packets.Properties{}}),
		"topic alias":             encodePublish(t, &packets.Publish{Topic: "a", QoS: 1, PacketID: 1, Properties: &packets.Properties{TopicAlias: &alias}}),
		"empty topic":             encodePublish(t, &packets.Publish{Topic: "", QoS: 1, PacketID: 1, Properties: &packets.Properties{TopicAlias: &alias}}),
		"stub":                    encodePublish(t, &packets.Publish{Topic: "a", QoS: 1, PacketID: 1, Properties: &packets.Properties{SubscriptionIdentifier: &zero}}),
		"packet identifier 0":     encodePublish(t, &packets.Publish{Topic: "a", QoS: 1, PacketID: 0, Properties: &packets.Properties{}}),
		"payload format 2":        encodePublish(t, &packets.Publish{Topic: "a", QoS: 1, PacketID: 1, Properties: &packets.Properties{PayloadFormat: &two}}),
		"topic not UTF-8":         encodePublish(t, &packets.Publish{Topic: "a\xff", QoS: 1, PacketID: 1, Properties: &packets.Properties{}}),
		"QoS 3":                   {0x36, 6, 0, 1, 'a', 0, 1, 0},
		"not a PUBLISH":           {0x40, 3, 0, 1, 0},
		"property twice":          {0x32, 11, 0, 1, 'a', 0, 1, 4, 1, 1, 1, 1, 'x'},
		"unknown property":        {0x32, 9, 0, 1, 'a', 0, 1, 2, 0x7f, 0, 'x'},
		"properties past the end": {0x32, 7, 0, 1, 'a', 0, 1, 9, 1},
		"topic past the end":      {0x30, 3, 0, 9, 'a'},
		"user property cut short": {0x32, 10, 0, 1, 'a', 0, 1, 4, 0x26, 0, 1, 'k'},
	}
	for name, b := range cases {
		var m inbound
		if parsePublish(b, fixedHeaderLen(t, b), &m, &interner{}) {
			t.Errorf("%s: parsePublish took % x", name, b)
		}
	}
}

// Whatever parsePublish takes, paho reads the same message from.
func FuzzParsePublish(f *testing.F) {
	for _, p := range publishSeeds() {
		f.Add(encodePublish(f, p))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 2 {
			return
		}
		hdr := 0
		for n := 2; n <= 5 && n <= len(b); n++ {
			if b[n-1]&0x80 == 0 {
				hdr = n
				break
			}
		}
		if hdr == 0 {
			return
		}
		_, length, _ := uvarint(b[1:hdr])
		if hdr+length != len(b) {
			return // bufConn hands it whole packets only
		}
		var m inbound
		if parsePublish(b, hdr, &m, &interner{}) {
			samePublish(t, b, &m)
		}
	})
}

func TestInternerForgetsWhenFull(t *testing.T) {
	var in interner
	a := in.get([]byte("sensors/a"))
	if b := in.get([]byte("sensors/a")); b != a || len(in.m) != 1 {
		t.Fatalf("got %q, %d topics kept", b, len(in.m))
	}
	for i := range maxTopics + 10 {
		in.get(fmt.Appendf(nil, "t/%d", i))
	}
	if len(in.m) > maxTopics {
		t.Fatalf("%d topics kept, want at most %d", len(in.m), maxTopics)
	}
}

// Messages reach the sink in the order the broker sent them whichever way
// they are read: QoS 2 through paho, QoS 0 and 1 by bufConn, one after
// the other with nothing between them (a session's queue, sent at once
// on connecting).
func TestMixedQoSKeepsOrder(t *testing.T) {
	// The buffer has room: bufConn reads the QoS 1 messages itself. A sink
	// without room: every message goes through paho.
	t.Run("room", func(t *testing.T) { testMixedQoS(t, false) })
	t.Run("no room", func(t *testing.T) { testMixedQoS(t, true) })
}

// noRoom is a buffer that never has room for TryAppend.
type noRoom struct{ *buffer.Buffer }

func (noRoom) TryAppend(*buffer.Record, func(uint64, error)) (bool, error) { return false, nil }

func testMixedQoS(t *testing.T, full bool) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt v2.7.9 does not hand a resumed session to a new connection reliably")
	u, _ := url.Parse(broker.URL())
	cfg := Config{URL: u, Subscriptions: []Subscription{{Filter: "sensors/#", QoS: 2}}, ReceiveMaximum: 100}
	buf, err := buffer.Open(filepath.Join(t.TempDir(), "b.db"), buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	_, done, cancel := startIngestWith(t, cfg, buf, nil)
	cancel() // the session stays, and collects what comes meanwhile
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	const n = 300
	pub := publisher(t, broker.Addr)
	for i := range n {
		qos := []byte{1, 2, 1, 1, 2, 2}[i%6]
		if _, err := pub.Publish(context.Background(), &paho.Publish{Topic: "sensors/a", QoS: qos, Payload: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	var sink Sink = buf
	if full {
		sink = noRoom{buf}
	}
	in, done, cancel := startIngestWith(t, cfg, sink, nil)
	defer cancel()
	waitFor(t, 15*time.Second, "every message", func() bool { return in.Stats().Acknowledged == n })
	taken := in.sess.current().w.(*bufConn).taken.Load()
	if full && taken != 0 || !full && taken == 0 {
		t.Errorf("bufConn read %d of the %d messages itself", taken, n)
	}
	ctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	recs, err := buf.Read(ctx, 0, 2*n, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(recs) != n {
		t.Fatalf("%d records, want %d", len(recs), n)
	}
	for i, r := range recs {
		if want := fmt.Sprint(i); string(r.Payload) != want {
			t.Fatalf("record %d is message %s", i, r.Payload)
		}
	}
}

// A PUBLISH that paho's session answers itself, not passing it on to
// onPublish, is counted off passed all the same: bufConn goes on reading
// messages itself.
func TestPublishPahoAnswersIsCountedOff(t *testing.T) {
	c, _ := testenv.TCPPair(t)
	bc := newBufConn(c, 0)
	s := newSession()
	if err := s.ConAckReceived(bc, &packets.Connect{CleanStart: true}, &packets.Connack{}); err != nil {
		t.Fatal(err)
	}
	if err := s.pubrec(s.current(), 7); err != nil {
		t.Fatal(err)
	}
	pubs := make(chan *packets.Publish, 1)
	for _, tt := range []struct {
		name    string
		p       *packets.Publish
		forward bool
	}{
		{"a new message", &packets.Publish{Topic: "a", QoS: 2, PacketID: 8}, true},
		{"a QoS 2 message answered already", &packets.Publish{Topic: "a", QoS: 2, PacketID: 7, Duplicate: true}, false},
		{"packet identifier 0", &packets.Publish{Topic: "a", QoS: 1, PacketID: 0}, false},
	} {
		bc.passed.Store(1)
		s.PacketReceived(&packets.ControlPacket{FixedHeader: packets.FixedHeader{Type: packets.PUBLISH}, Content: tt.p}, pubs)
		select {
		case <-pubs:
			if !tt.forward {
				t.Errorf("%s: passed on to onPublish", tt.name)
			}
		default:
			if tt.forward {
				t.Errorf("%s: not passed on to onPublish", tt.name)
			}
		}
		if want := map[bool]int32{true: 1, false: 0}[tt.forward]; bc.passed.Load() != want {
			t.Errorf("%s: passed %d, want %d", tt.name, bc.passed.Load(), want)
		}
	}
}
