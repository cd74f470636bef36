package mqtt

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/testenv"
)

// topicSink records the topics of the records it is given and reports them
// durable at once.
type topicSink struct {
	mu     sync.Mutex
	topics []string
}

func (s *topicSink) Append(rec *buffer.Record, done func(uint64, error)) error {
	s.mu.Lock()
	s.topics = append(s.topics, rec.Topic)
	n := len(s.topics)
	s.mu.Unlock()
	done(uint64(n), nil)
	return nil
}

func (s *topicSink) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.topics)
}

func (s *topicSink) count(topic string) int {
	n := 0
	for _, t := range s.got() {
		if t == topic {
			n++
		}
	}
	return n
}

func publish(t *testing.T, pub *paho.Client, topic string, qos byte, payload string) {
	t.Helper()
	if _, err := pub.Publish(context.Background(), &paho.Publish{Topic: topic, QoS: qos, Payload: []byte(payload)}); err != nil {
		t.Fatal(err)
	}
}

// stopIngest stops a running ingest and fails the test if Run failed.
func stopIngest(t *testing.T, done chan error, cancel context.CancelFunc) {
	t.Helper()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// An operator removes a subscription and restarts ferry with the same client
// id: the broker's session still holds the old filter, so ferry must
// unsubscribe it. A message on the removed filter, queued while ferry was
// away or published after the restart, is not forwarded (the queued one is
// acknowledged and counted).
func TestRemovedSubscriptionIsUnsubscribedAfterRestart(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt v2.7.9 does not hand a resumed session to a new connection reliably")
	u, _ := url.Parse(broker.URL())
	state := filepath.Join(t.TempDir(), "buffer.db.mqtt")
	cfg := Config{URL: u, StateFile: state, Subscriptions: []Subscription{{Filter: "legacy/#", QoS: 1}, {Filter: "sensors/+/telemetry", QoS: 1}}}
	first := &topicSink{}
	_, done, cancel := startIngestWith(t, cfg, first, nil)
	stopIngest(t, done, cancel)

	pub := publisher(t, broker.Addr)
	publish(t, pub, "legacy/secret/queued", 1, "while ferry was away")

	cfg.Subscriptions = []Subscription{{Filter: "sensors/+/telemetry", QoS: 1}}
	second := &topicSink{}
	in, done, cancel := startIngestWith(t, cfg, second, nil)
	defer cancel()
	publish(t, pub, "legacy/secret/x", 1, "after the restart")
	publish(t, pub, "sensors/a/telemetry", 1, "wanted")
	waitFor(t, 10*time.Second, "the wanted message", func() bool { return second.count("sensors/a/telemetry") == 1 })
	waitFor(t, 5*time.Second, "the queued legacy message to be dropped", func() bool { return in.Stats().DroppedUnsubscribed == 1 })
	time.Sleep(200 * time.Millisecond)
	if got := second.got(); !slices.Equal(got, []string{"sensors/a/telemetry"}) {
		t.Fatalf("records %q, want only sensors/a/telemetry", got)
	}
	stopIngest(t, done, cancel)

	// The dropped message was acknowledged: a third session gets nothing.
	third := &topicSink{}
	in, done, cancel = startIngestWith(t, cfg, third, nil)
	time.Sleep(300 * time.Millisecond)
	stopIngest(t, done, cancel)
	if got := third.got(); len(got) != 0 || in.Stats().Received != 0 {
		t.Fatalf("a later session got %q", got)
	}
}

// Widening sensors/+/telemetry to # must not leave both subscriptions in
// the session: every message would come twice.
func TestWidenedSubscriptionDeliversOnce(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt v2.7.9 does not hand a resumed session to a new connection reliably")
	u, _ := url.Parse(broker.URL())
	state := filepath.Join(t.TempDir(), "buffer.db.mqtt")
	cfg := Config{URL: u, StateFile: state, Subscriptions: []Subscription{{Filter: "sensors/+/telemetry", QoS: 1}}}
	_, done, cancel := startIngestWith(t, cfg, &topicSink{}, nil)
	stopIngest(t, done, cancel)

	cfg.Subscriptions = []Subscription{{Filter: "#", QoS: 1}}
	sink := &topicSink{}
	_, done, cancel = startIngestWith(t, cfg, sink, nil)
	defer cancel()
	pub := publisher(t, broker.Addr)
	const n = 100
	for range n {
		publish(t, pub, "sensors/a/telemetry", 1, "x")
	}
	publish(t, pub, "end", 1, "x")
	waitFor(t, 10*time.Second, "the last message", func() bool { return sink.count("end") == 1 })
	time.Sleep(100 * time.Millisecond)
	if got := sink.count("sensors/a/telemetry"); got != n {
		t.Fatalf("%d records for %d messages", got, n)
	}
	stopIngest(t, done, cancel)
}

// Mosquitto restarted without persistence forgets ferry's session: ferry
// says so, counts it, and is back within about a second of the broker.
func TestLostSessionIsCountedAndReconnectIsQuick(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "the broker must be restarted")
	u, _ := url.Parse(broker.URL())
	sink := &topicSink{}
	in, done, cancel := startIngestWith(t, Config{URL: u}, sink, nil)
	defer cancel()
	if n := in.Stats().SessionsLost; n != 0 {
		t.Fatalf("SessionsLost %d on the first connection", n)
	}
	if err := broker.Restart(time.Second); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	waitFor(t, 10*time.Second, "ingest to subscribe again", func() bool {
		st := in.Stats()
		return st.Subscribed && st.SessionsLost == 1
	})
	if took := time.Since(back); took > 1200*time.Millisecond {
		t.Errorf("subscribed again %v after the broker was back, want within a second", took)
	}
	pub := publisher(t, broker.Addr)
	publish(t, pub, "sensors/a", 1, "x")
	waitFor(t, 10*time.Second, "a message after the reconnect", func() bool { return sink.count("sensors/a") == 1 })
	stopIngest(t, done, cancel)
}

// Stats tell the connection's state, since when, and why it is down.
func TestConnectionStateInStats(t *testing.T) {
	broker := testenv.NewBroker(t)
	u, _ := url.Parse(broker.URL())
	start := time.Now()
	in, done, cancel := startIngestWith(t, Config{URL: u}, &topicSink{}, nil)
	defer cancel()
	st := in.Stats()
	if st.State != StateConnected || st.Since.Before(start) || st.Since.After(time.Now()) || st.LastError != "" {
		t.Fatalf("subscribed: state %v since %v, last error %q; want connected since it came up, no error", st.State, st.Since, st.LastError)
	}
	up := st.Since
	if err := broker.Close(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	waitFor(t, 10*time.Second, "a failed attempt to reconnect", func() bool { return in.Stats().State == StateUnreachable })
	st = in.Stats()
	if !st.Since.After(up) || st.Since.After(down.Add(5*time.Second)) || st.LastError == "" || st.Connected {
		t.Fatalf("broker gone: since %v (up since %v, closed at %v), last error %q, connected %v; want down since the close, and why",
			st.Since, up, down, st.LastError, st.Connected)
	}
	t.Logf("broker gone: %v since %v: %s", st.State, st.Since.Sub(down), st.LastError)
	time.Sleep(300 * time.Millisecond)
	if again := in.Stats(); again.Since != st.Since {
		t.Fatalf("since moved from %v to %v while the broker stayed away", st.Since, again.Since)
	}
	stopIngest(t, done, cancel)
	if st := in.Stats(); st.State != StateStopped || st.State.String() != "stopped" {
		t.Fatalf("after Run: state %v, want stopped", st.State)
	}
}

// QoS 2: the PUBREC waits for the record to be durable, as PUBACK does.
func TestQoS2WaitsForDurableRecord(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt v2.7.9 does not hand a resumed session to a new connection reliably")
	buf, err := buffer.Open(filepath.Join(t.TempDir(), "b.db"), buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	u, _ := url.Parse(broker.URL())
	cfg := Config{URL: u, Subscriptions: []Subscription{{Filter: "sensors/#", QoS: ExactlyOnce}}}
	sink := &gatedSink{buf: buf}
	in, done, cancel := startIngestWith(t, cfg, sink, nil)
	defer cancel()
	publish(t, publisher(t, broker.Addr), "sensors/a", 2, "exactly once")
	waitFor(t, 10*time.Second, "the message", func() bool { return in.Stats().Received == 1 })
	time.Sleep(200 * time.Millisecond)
	if n := in.Stats().Acknowledged; n != 0 {
		t.Fatalf("PUBREC sent before the record was durable")
	}
	sink.release()
	waitFor(t, 10*time.Second, "the PUBREC", func() bool { return in.Stats().Acknowledged == 1 })
	time.Sleep(200 * time.Millisecond) // PUBREL, PUBCOMP
	stopIngest(t, done, cancel)

	again := &topicSink{}
	in, done, cancel = startIngestWith(t, cfg, again, nil)
	time.Sleep(300 * time.Millisecond)
	stopIngest(t, done, cancel)
	if n := in.Stats().Received; n != 0 {
		t.Fatalf("an acknowledged QoS 2 message came again %d times", n)
	}
}

// Two ingests with one shared subscription ($share/ferry/...) split the
// stream: each gets part of it, together all of it, no message twice.
func TestSharedSubscriptionSplitsTheStream(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt v2.7.9 stalls under sustained QoS 1 load")
	u, _ := url.Parse(broker.URL())
	shared := []Subscription{{Filter: "$share/ferry/sensors/+/telemetry", QoS: 1}}
	var sinks [2]*topicSink
	for i := range sinks {
		sinks[i] = &topicSink{}
		cfg := Config{URL: u, ClientID: fmt.Sprintf("ferry-%d", i), StateFile: filepath.Join(t.TempDir(), "subs"), Subscriptions: shared}
		_, done, cancel := startIngestWith(t, cfg, sinks[i], nil)
		t.Cleanup(func() { stopIngest(t, done, cancel) })
	}
	pub := publisher(t, broker.Addr)
	const n = 1000
	for i := range n {
		publish(t, pub, fmt.Sprintf("sensors/%d/telemetry", i), 1, "x")
	}
	total := func() int { return len(sinks[0].got()) + len(sinks[1].got()) }
	waitFor(t, 10*time.Second, "every message", func() bool { return total() >= n })
	time.Sleep(200 * time.Millisecond)
	seen := map[string]int{}
	for _, s := range sinks {
		if len(s.got()) == 0 {
			t.Errorf("one ingest got nothing: the stream was not split")
		}
		for _, topic := range s.got() {
			seen[topic]++
		}
	}
	if len(seen) != n || total() != n {
		t.Fatalf("%d distinct messages, %d records, want %d of each", len(seen), total(), n)
	}
	t.Logf("split %d / %d", len(sinks[0].got()), len(sinks[1].got()))
}
