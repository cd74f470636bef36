package mqtt

import (
	"context"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/testenv"
)

// retainSink records the retain flag of every record by topic.
type retainSink struct {
	mu     sync.Mutex
	retain map[string][]bool
}

func (s *retainSink) Append(rec *buffer.Record, done func(uint64, error)) error {
	s.mu.Lock()
	if s.retain == nil {
		s.retain = map[string][]bool{}
	}
	s.retain[rec.Topic] = append(s.retain[rec.Topic], rec.Retain)
	s.mu.Unlock()
	done(1, nil)
	return nil
}

func (s *retainSink) get(topic string) []bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]bool(nil), s.retain[topic]...)
}

// Retained messages against Mosquitto: retain_handling 1 (the default)
// sends a filter's retained messages when the subscription is new to the
// session, not again when the session resumes it; 2 never; 0 at every
// subscribe. retain_as_published keeps the retain flag of a message
// published with it while ferry is subscribed (else the broker clears
// it).
func TestRetainedMessages(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "needs a resumed session")
	pub := publisher(t, broker.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	retained := func(topic string) {
		t.Helper()
		if _, err := pub.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte("r")}); err != nil {
			t.Fatal(err)
		}
	}
	retained("new/r")
	retained("never/r")
	retained("always/r")
	u, _ := url.Parse(broker.URL())
	subs := []Subscription{
		{Filter: "new/#", QoS: 1, RetainHandling: 1},
		{Filter: "never/#", QoS: 1, RetainHandling: 2},
		{Filter: "always/#", QoS: 1, RetainHandling: 0},
		{Filter: "asis/#", QoS: 1, RetainHandling: 2, RetainAsPub: true},
	}
	run := func() *retainSink {
		t.Helper()
		sink := &retainSink{}
		_, done, stop := startIngestWith(t, Config{URL: u, Subscriptions: subs}, sink, nil)
		retained("asis/r") // published while subscribed
		waitFor(t, 10*time.Second, "the live retained message", func() bool { return len(sink.get("asis/r")) == 1 })
		time.Sleep(300 * time.Millisecond) // any retained message due has come by now
		stopIngest(t, done, stop)
		return sink
	}
	first := run()
	if got := first.get("new/r"); len(got) != 1 || !got[0] {
		t.Errorf("retain_handling 1, new subscription: %v, want one retained message", got)
	}
	if got := first.get("never/r"); len(got) != 0 {
		t.Errorf("retain_handling 2: %v, want none", got)
	}
	if got := first.get("always/r"); len(got) != 1 {
		t.Errorf("retain_handling 0: %v, want one", got)
	}
	if got := first.get("asis/r"); !got[0] {
		t.Errorf("retain_as_published: the retain flag was cleared")
	}
	second := run() // the session resumes the subscriptions
	if got := second.get("new/r"); len(got) != 0 {
		t.Errorf("retain_handling 1, resumed subscription: %v, want none", got)
	}
	if got := second.get("always/r"); len(got) != 1 {
		t.Errorf("retain_handling 0 after a restart: %v, want one", got)
	}
}
