package mqtt

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// An oversized QoS 1 message streamed in steadily over 4 s, with a 1 s
// keep-alive: reading it through is news from the broker, and the
// keep-alive must not take the long read for a silent broker.
func TestSlowOversizedMessageKeepsConnection(t *testing.T) {
	fb := newFakeBroker(t)
	u, _ := url.Parse("tcp://" + fb.ln.Addr().String())
	var log logBuffer
	in, err := New(Config{URL: u, ClientID: "ferry-test", KeepAlive: time.Second, MaxPayload: 64 << 10,
		Logger: slog.New(slog.NewTextHandler(&log, nil)), Subscriptions: []Subscription{{Filter: "#", QoS: 1}}}, &topicSink{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	fb.accept(t)
	waitFor(t, 5*time.Second, "the subscription", func() bool { return in.Stats().Subscribed })
	go func() {
		for {
			if _, err := packets.ReadPacket(fb.r); err != nil {
				return
			}
		}
	}()
	const size = 1 << 20
	topic := "big/a"
	vh := binary.BigEndian.AppendUint16(nil, uint16(len(topic)))
	vh = append(vh, topic...)
	vh = binary.BigEndian.AppendUint16(vh, 1)
	vh = append(vh, 0)
	hdr := []byte{packets.PUBLISH<<4 | 1<<1}
	for l := len(vh) + size; ; {
		d := byte(l & 0x7f)
		if l >>= 7; l > 0 {
			hdr = append(hdr, d|0x80)
			continue
		}
		hdr = append(hdr, d)
		break
	}
	fb.conn.Write(append(hdr, vh...))
	chunk := make([]byte, 32<<10)
	for left := size; left > 0; left -= len(chunk) {
		if _, err := fb.conn.Write(chunk); err != nil {
			break
		}
		time.Sleep(125 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if strings.Contains(log.String(), "connection to broker lost") {
		t.Errorf("connection dropped while an oversized message streamed in:\n%s", log.String())
	}
	cancel()
	<-done
}
