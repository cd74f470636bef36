package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/topic"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newBuffer(t *testing.T) *buffer.Buffer {
	t.Helper()
	b, err := buffer.Open(filepath.Join(t.TempDir(), "buffer.db"), buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func newCluster(t *testing.T, topics ...string) *kfake.Cluster {
	t.Helper()
	return newClusterWith(t, 2, nil, topics...)
}

func newPartitionedCluster(t *testing.T, partitions int, topics ...string) *kfake.Cluster {
	t.Helper()
	return newClusterWith(t, partitions, nil, topics...)
}

// newClusterWith starts a one-broker kfake cluster on loopback with topics
// of the given number of partitions.
func newClusterWith(t *testing.T, partitions int, extra []kfake.Opt, topics ...string) *kfake.Cluster {
	t.Helper()
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.ListenFn(func(network, _ string) (net.Listener, error) {
		return net.Listen(network, "127.0.0.1:0")
	})}
	if len(topics) > 0 {
		opts = append(opts, kfake.SeedTopics(int32(partitions), topics...))
	}
	c, err := kfake.NewCluster(append(opts, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func route(t *testing.T, match, topicT, key string) Route {
	t.Helper()
	p, err := topic.ParsePattern(match)
	if err != nil {
		t.Fatal(err)
	}
	r := Route{Match: p}
	if r.Topic, err = topic.ParseTemplate(topicT, topic.TemplateNames(p)); err != nil {
		t.Fatal(err)
	}
	if key != "" {
		if r.Key, err = topic.ParseTemplate(key, topic.TemplateNames(p)); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func appendN(t *testing.T, b *buffer.Buffer, topicName string, n int) {
	t.Helper()
	for i := range n {
		rec := &buffer.Record{Topic: topicName, Payload: fmt.Appendf(nil, "%d", i), QoS: 1, ReceivedAt: time.Unix(1700000000+int64(i), 0)}
		if _, err := b.AppendWait(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
}

// run starts f and returns a function that stops it and checks its result.
func run(t *testing.T, f *Forwarder) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	return func() {
		t.Helper()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// consume reads n records of topic from c.
func consume(t *testing.T, c *kfake.Cluster, topicName string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topicName))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of %d records: %v", len(out), n, err)
		}
		out = append(out, fs.Records()...)
	}
	return out
}

func TestForwardsInOrderWithKeyHeadersTimestamp(t *testing.T) {
	c := newCluster(t, "t-dev")
	b := newBuffer(t)
	rec := &buffer.Record{
		Topic: "s/dev/x", Payload: []byte("payload"), QoS: 1, ReceivedAt: time.Unix(1700000000, 5e6),
		ContentType: "application/json", UserProperties: []buffer.Property{{Key: "unit", Value: "C"}},
		ClockUnsynced: true,
	}
	if _, err := b.AppendWait(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	appendN(t, b, "s/dev/x", 99)
	f, err := New(Config{Brokers: c.ListenAddrs(), GatewayID: "gw", Routes: []Route{route(t, "s/{d}/#", "t-{d}", "{d}")}}, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	recs := consume(t, c, "t-dev", 100)
	stop()

	r := recs[0]
	if string(r.Key) != "dev" || string(r.Value) != "payload" || !r.Timestamp.Equal(rec.ReceivedAt) {
		t.Fatalf("first record key %q value %q timestamp %v", r.Key, r.Value, r.Timestamp)
	}
	h := map[string]string{}
	for _, kv := range r.Headers {
		h[kv.Key] = string(kv.Value)
	}
	want := map[string]string{HeaderMQTTTopic: "s/dev/x", HeaderGateway: "gw", HeaderQoS: "1", HeaderContentType: "application/json", "unit": "C",
		HeaderClock: "unsynced"}
	for k, v := range want {
		if h[k] != v {
			t.Errorf("header %s = %q, want %q", k, h[k], v)
		}
	}
	for _, kv := range recs[1].Headers {
		if kv.Key == HeaderClock {
			t.Errorf("header %s on a record received with the clock synchronized", HeaderClock)
		}
	}
	for i, r := range recs[1:] {
		if string(r.Value) != fmt.Sprint(i) {
			t.Fatalf("record %d has value %q: out of order", i+1, r.Value)
		}
	}
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
}

func TestUnroutedIsCountedAndReleased(t *testing.T) {
	c := newCluster(t, "t")
	b := newBuffer(t)
	appendN(t, b, "other/topic", 3)
	appendN(t, b, "s/a", 1)
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/+", "t", "")}}, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	consume(t, c, "t", 1)
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
	stop()
	if st := f.Stats(); st.Unrouted != 3 || st.Delivered != 1 {
		t.Fatalf("stats %+v, want 3 unrouted, 1 delivered", st)
	}
}

func TestTooLargeIsDeadLetteredBeforeProducing(t *testing.T) {
	c := newCluster(t, "t")
	b := newBuffer(t)
	if _, err := b.AppendWait(context.Background(), &buffer.Record{Topic: "s/a", Payload: make([]byte, 5000)}); err != nil {
		t.Fatal(err)
	}
	appendN(t, b, "s/a", 1)
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/+", "t", "")}, MaxRecordBytes: 1000}, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	consume(t, c, "t", 1)
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
	stop()
	if st := f.Stats(); st.DeadLettered[ReasonTooLarge] != 1 {
		t.Fatalf("forward stats %+v, want 1 dead-lettered", st)
	}
	if st := b.Stats(); st.DeadLettered[ReasonTooLarge] != 1 {
		t.Fatalf("buffer stats %+v, want 1 dead-lettered", st)
	}
}

// A topic that does not exist is an error in Stats and the log; the records
// wait in the buffer and go out once the topic exists.
func TestMissingTopicWaitsInBuffer(t *testing.T) {
	c := newCluster(t)
	b := newBuffer(t)
	appendN(t, b, "s/a", 10)
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/+", "late", "")}}, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	defer stop()
	waitFor(t, "an unknown-topic error", func() bool { return strings.Contains(f.Stats().LastError, "UNKNOWN_TOPIC") })
	time.Sleep(time.Second) // a retry or two
	if n := b.Stats().Records; n != 10 {
		t.Fatalf("buffer holds %d records while the topic is missing, want 10", n)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = "late", 1, 1
	req.Topics = append(req.Topics, rt)
	if _, err := req.RequestWith(context.Background(), cl); err != nil {
		t.Fatal(err)
	}
	recs := consume(t, c, "late", 10)
	for i, r := range recs {
		if string(r.Value) != fmt.Sprint(i) {
			t.Fatalf("record %d has value %q: out of order", i, r.Value)
		}
	}
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
	waitFor(t, "the error to clear", func() bool { return f.Stats().LastError == "" })
}

func TestErrKeyIgnoresLocalPort(t *testing.T) {
	mk := func(port int) error {
		return fmt.Errorf("connect: %w", &net.OpError{Op: "read", Net: "tcp",
			Source: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port},
			Addr:   &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9092}, Err: syscall.ECONNRESET})
	}
	if errKey(mk(40000)) != errKey(mk(40001)) {
		t.Fatalf("keys differ by local port: %q vs %q", errKey(mk(40000)), errKey(mk(40001)))
	}
	if errKey(errors.New("a")) == errKey(errors.New("b")) {
		t.Fatal("different errors share a key")
	}
}

func TestBackoffIsCappedAndJittered(t *testing.T) {
	bo := backoff(100*time.Millisecond, time.Second)
	for attempt := 1; attempt < 50; attempt++ {
		d := bo(attempt)
		if d < 0 || d > time.Second {
			t.Fatalf("attempt %d: %v outside [0, 1s]", attempt, d)
		}
	}
	if d := bo(1); d > 100*time.Millisecond {
		t.Fatalf("first backoff %v above 100ms", d)
	}
}

// Records a limit drops are reported upstream in a status record.
func TestStatusRecordReportsDrops(t *testing.T) {
	c := newCluster(t, "t", "ferry.status")
	b, err := buffer.Open(filepath.Join(t.TempDir(), "buffer.db"), buffer.Options{MaxBytes: 300})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	appendN(t, b, "s/a", 20) // ~40 bytes each: the oldest are dropped for max_bytes
	dropped := b.Stats().Dropped[buffer.DropMaxBytes]
	if dropped == 0 {
		t.Fatal("no records were dropped; the test needs drops")
	}
	f, err := New(Config{Brokers: c.ListenAddrs(), GatewayID: "gw-7", Routes: []Route{route(t, "s/+", "t", "")},
		StatusTopic: "ferry.status", StatusInterval: time.Hour}, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	recs := consume(t, c, "ferry.status", 1)
	stop()
	var st Status
	if err := json.Unmarshal(recs[0].Value, &st); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(recs[0].Value), `"corrupt_files":0`) {
		t.Errorf("status %s does not say how many damaged buffer files were moved aside", recs[0].Value)
	}
	if string(recs[0].Key) != "gw-7" || st.GatewayID != "gw-7" || st.Dropped[buffer.DropMaxBytes] != dropped {
		t.Fatalf("status key %q: %+v, want gateway gw-7 and %d dropped for max_bytes", recs[0].Key, st, dropped)
	}
}

// A record Kafka really rejects for good (here: larger than the broker's
// message.max.bytes) is found and dead-lettered; the records around it are
// delivered, in order, and forwarding goes on.
func TestRecordOverKafkaLimitIsDeadLettered(t *testing.T) {
	c := newClusterWith(t, 2, []kfake.Opt{kfake.BrokerConfigs(map[string]string{"message.max.bytes": "2000"})}, "t")
	b := newBuffer(t)
	appendN(t, b, "s/a", 3)
	if _, err := b.AppendWait(context.Background(), &buffer.Record{Topic: "s/a", Payload: make([]byte, 5000)}); err != nil {
		t.Fatal(err)
	}
	for i := 3; i < 6; i++ {
		if _, err := b.AppendWait(context.Background(), &buffer.Record{Topic: "s/a", Payload: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/+", "t", "k")}}, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
	recs := consume(t, c, "t", 6)
	stop()
	var firsts []string
	seen := map[string]bool{}
	for _, r := range recs {
		if !seen[string(r.Value)] {
			seen[string(r.Value)] = true
			firsts = append(firsts, string(r.Value))
		}
	}
	if fmt.Sprint(firsts) != "[0 1 2 3 4 5]" {
		t.Fatalf("first deliveries %v, want [0 1 2 3 4 5]", firsts)
	}
	if st := b.Stats(); st.DeadLettered[ReasonTooLarge] != 1 || st.DeadLetterRecords != 1 {
		t.Fatalf("buffer stats %+v, want the rejected record dead-lettered", st)
	}
}

// Stopping must not wait for records a silent broker will never settle.
// silenceProduce makes c answer no produce request until the test ends.
func silenceProduce(t *testing.T, c *kfake.Cluster) {
	silent := make(chan struct{})
	t.Cleanup(func() { close(silent) })
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		c.SleepControl(func() { <-silent })
		return nil, nil, false
	})
}

func TestRunStopsWhileKafkaIsSilent(t *testing.T) {
	c := newCluster(t, "t")
	b := newBuffer(t)
	appendN(t, b, "s/a", 5)
	silenceProduce(t, c)
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/+", "t", "")},
		StatusTopic: "ferry.status", ShutdownTimeout: 500 * time.Millisecond}, b)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	time.Sleep(500 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of cancel while Kafka was silent")
	}
	if n := b.Stats().Records; n != 5 {
		t.Fatalf("%d records left in the buffer, want all 5 (none acknowledged)", n)
	}
}

// MaxBatchBytes given alone sets the largest record to what fits a batch;
// MaxRecordBytes never exceeds it.
func TestMaxBatchBytesSetsTheRecordLimit(t *testing.T) {
	b := newBuffer(t)
	routes := []Route{route(t, "s/+", "t", "")}
	for _, tt := range []struct{ batch, record, want int }{
		{8 << 20, 0, 8<<20 - batchOverhead},
		{0, 0, 1_000_000},
		{1 << 20, 2 << 20, 1<<20 - batchOverhead},
		{1 << 20, 500_000, 500_000},
	} {
		f, err := New(Config{Brokers: []string{"127.0.0.1:1"}, Routes: routes, MaxBatchBytes: tt.batch, MaxRecordBytes: tt.record}, b)
		if err != nil {
			t.Fatal(err)
		}
		if f.cfg.MaxRecordBytes != tt.want || f.cfg.MaxBatchBytes < f.cfg.MaxRecordBytes+batchOverhead {
			t.Errorf("batch %d, record %d: MaxRecordBytes %d, MaxBatchBytes %d; want record %d", tt.batch, tt.record, f.cfg.MaxRecordBytes, f.cfg.MaxBatchBytes, tt.want)
		}
	}
}
