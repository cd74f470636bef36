package mqtt

import (
	"context"
	"errors"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/goleak"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// gatedSink is a real buffer whose commit callbacks are held until the test
// opens the gate, so the test can see what the broker hears before a record
// is durable.
type gatedSink struct {
	buf  *buffer.Buffer
	mu   sync.Mutex
	open bool
	held []func()
	fail error
}

func (s *gatedSink) Append(rec *buffer.Record, done func(uint64, error)) error {
	return s.buf.Append(rec, func(seq uint64, err error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		finish := func() {
			if s.fail != nil {
				err = s.fail
			}
			done(seq, err)
		}
		if s.open {
			finish()
			return
		}
		s.held = append(s.held, finish)
	})
}

func (s *gatedSink) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.open = true
	for _, f := range s.held {
		f()
	}
	s.held = nil
}

func startIngest(t *testing.T, brokerURL string, sink Sink) (*Ingest, chan error, context.CancelFunc) {
	t.Helper()
	u, _ := url.Parse(brokerURL)
	return startIngestWith(t, Config{URL: u}, sink, nil)
}

// startIngestWith runs an ingest of cfg, with the client id, session expiry
// and subscription the tests use where cfg has none, after setup (if not
// nil) had its way with it, and waits until it is subscribed.
func startIngestWith(t *testing.T, cfg Config, sink Sink, setup func(*Ingest)) (*Ingest, chan error, context.CancelFunc) {
	t.Helper()
	if cfg.ClientID == "" {
		cfg.ClientID = "ferry-test"
	}
	if cfg.SessionExpiry == 0 {
		cfg.SessionExpiry = time.Hour
	}
	if cfg.Subscriptions == nil {
		cfg.Subscriptions = []Subscription{{Filter: "sensors/#", QoS: 1}}
	}
	in, err := New(cfg, sink)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(in)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	deadline := time.Now().Add(15 * time.Second)
	for !in.Stats().Subscribed {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatal("ingest did not subscribe")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return in, done, cancel
}

func publisher(t *testing.T, addr string) *paho.Client {
	t.Helper()
	return publisherAs(t, addr, "", "")
}

// publisherAs is publisher logged in as user with password (none if user
// is "").
func publisherAs(t *testing.T, addr, user, password string) *paho.Client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: "pub"})
	cp := &paho.Connect{ClientID: "pub", CleanStart: true, KeepAlive: 30}
	if user != "" {
		cp.Username, cp.UsernameFlag = user, true
		cp.Password, cp.PasswordFlag = []byte(password), true
	}
	if _, err := c.Connect(context.Background(), cp); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c
}

// The broker must not hear PUBACK for a message before its record is
// durable: a publisher's QoS 1 publish to ferry's subscription completes
// only after ferry's own ack, which waits for the buffer.
//
// Mosquitto acknowledges the publisher independently of subscribers, so the
// test watches the broker's view from ferry's side: while the commit is
// held, the broker must still count the message as in flight to ferry and
// redeliver it to a new connection of the same session.
func TestAckWaitsForDurableRecord(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt v2.7.9 does not hand a resumed session to a new connection reliably")
	buf, err := buffer.Open(filepath.Join(t.TempDir(), "b.db"), buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()

	sink := &gatedSink{buf: buf}
	in, done, cancel := startIngest(t, broker.URL(), sink)
	pub := publisher(t, broker.Addr)
	if _, err := pub.Publish(context.Background(), &paho.Publish{Topic: "sensors/a", QoS: 1, Payload: []byte("one")}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for in.Stats().Received < 1 {
		if time.Now().After(deadline) {
			t.Fatal("message not received")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The commit is held: ferry stops; the message was never acknowledged,
	// so the broker must deliver it again to the next session.
	time.Sleep(100 * time.Millisecond)
	cancel()
	go func() {
		time.Sleep(200 * time.Millisecond)
		sink.mu.Lock()
		sink.fail = errors.New("stopped")
		sink.mu.Unlock()
		sink.release()
	}()
	<-done
	if st := in.Stats(); st.Stored != 0 {
		t.Fatalf("stored %d with the commit held", st.Stored)
	}

	// A new ingest on the same session gets the message again.
	buf2 := &gatedSink{buf: buf, open: true}
	in2, done2, cancel2 := startIngest(t, broker.URL(), buf2)
	deadline = time.Now().Add(10 * time.Second)
	for in2.Stats().Stored < 1 {
		if time.Now().After(deadline) {
			t.Fatal("unacknowledged message was not redelivered to the persistent session")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel2()
	if err := <-done2; err != nil {
		t.Fatal(err)
	}
	// Acknowledged now: a third session gets nothing.
	in3, done3, cancel3 := startIngest(t, broker.URL(), &gatedSink{buf: buf, open: true})
	time.Sleep(500 * time.Millisecond)
	cancel3()
	<-done3
	if n := in3.Stats().Received; n != 0 {
		t.Fatalf("acknowledged message delivered again %d times", n)
	}
}

// A sink failure stops ingest with an error that names the cause, and the
// message is not acknowledged.
func TestSinkFailureStopsIngest(t *testing.T) {
	broker := testenv.NewBroker(t)
	buf, err := buffer.Open(filepath.Join(t.TempDir(), "b.db"), buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	sink := &gatedSink{buf: buf, open: true, fail: errors.New("disk on fire")}
	_, done, cancel := startIngest(t, broker.URL(), sink)
	defer cancel()
	pub := publisher(t, broker.Addr)
	if _, err := pub.Publish(context.Background(), &paho.Publish{Topic: "sensors/a", QoS: 1, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "disk on fire") || !strings.Contains(err.Error(), "sensors/a") {
			t.Fatalf("Run returned %v, want the sink's error with the topic", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ingest kept running after the sink failed")
	}
}

// MQTT v5 properties worth keeping reach the record.
func TestRecordKeepsProperties(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt v2.7.9 does not forward MQTT v5 user properties")
	buf, err := buffer.Open(filepath.Join(t.TempDir(), "b.db"), buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	_, done, cancel := startIngest(t, broker.URL(), buf)
	pub := publisher(t, broker.Addr)
	utf8 := byte(1)
	start := time.Now()
	_, err = pub.Publish(context.Background(), &paho.Publish{
		Topic: "sensors/b", QoS: 1, Payload: []byte(`{"t":21.5}`),
		Properties: &paho.PublishProperties{
			ContentType: "application/json", ResponseTopic: "replies/b", CorrelationData: []byte{1, 2},
			PayloadFormat: &utf8, User: paho.UserProperties{{Key: "unit", Value: "C"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	recs, err := buf.Read(ctx, 0, 10, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	r := recs[0]
	if r.Topic != "sensors/b" || string(r.Payload) != `{"t":21.5}` || r.QoS != 1 || r.ContentType != "application/json" ||
		r.ResponseTopic != "replies/b" || string(r.CorrelationData) != "\x01\x02" || !r.PayloadUTF8 ||
		len(r.UserProperties) != 1 || r.UserProperties[0] != (buffer.Property{Key: "unit", Value: "C"}) {
		t.Fatalf("record %+v", r)
	}
	if r.ReceivedAt.Before(start) || time.Since(r.ReceivedAt) > 10*time.Second {
		t.Fatalf("ReceivedAt %v, published at %v", r.ReceivedAt, start)
	}
}
