package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferry-edge/ferry/buffer"
)

// poison marks the record a test has Kafka refuse.
var poison = []byte("POISON")

// appendBacklog appends n records of one device (one key, so one
// partition); record bad (0-based) carries the poison mark.
func appendBacklog(t *testing.T, b *buffer.Buffer, n, bad int) {
	t.Helper()
	var durable atomic.Int64
	for i := range n {
		p := fmt.Appendf(nil, "%d", i)
		if i == bad {
			p = append(p, poison...)
		}
		if err := b.Append(&buffer.Record{Topic: "s/dev", Payload: p, QoS: 1, ReceivedAt: time.Now()}, func(uint64, error) { durable.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the backlog to be durable", func() bool { return durable.Load() == int64(n) })
}

// answerPoison makes the cluster answer code to every produce request
// whose batch holds the poison mark, the first `times` times (0: always),
// and handle every other request as usual.
func answerPoison(c *kfake.Cluster, code int16, times int64) *atomic.Int64 {
	var n atomic.Int64
	c.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := kreq.(*kmsg.ProduceRequest)
		hit := false
		for _, rt := range req.Topics {
			for _, rp := range rt.Partitions {
				hit = hit || bytes.Contains(rp.Records, poison)
			}
		}
		if !hit || times > 0 && n.Load() >= times {
			return nil, nil, false
		}
		n.Add(1)
		return refuse(req, func(kmsg.ProduceRequestTopicPartition) int16 { return code }), nil, true
	})
	return &n
}

// refuse answers req with the error code code gives each partition,
// writing nothing.
func refuse(req *kmsg.ProduceRequest, code func(kmsg.ProduceRequestTopicPartition) int16) *kmsg.ProduceResponse {
	resp := req.ResponseKind().(*kmsg.ProduceResponse)
	for _, rt := range req.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic, st.TopicID = rt.Topic, rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition, sp.ErrorCode, sp.BaseOffset = rp.Partition, code(rp), -1
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}

// checkDelivery reads topic t (one partition) and checks that the records
// of the backlog arrived in order, each once, except those in missing.
func checkDelivery(t *testing.T, c *kfake.Cluster, n int, missing ...int) {
	t.Helper()
	want := n - len(missing)
	recs := consume(t, c, "t", want)
	time.Sleep(200 * time.Millisecond) // room for a duplicate to show up
	recs = append(recs, consumeMore(t, c, "t", len(recs))...)
	skip := map[int]bool{}
	for _, m := range missing {
		skip[m] = true
	}
	seen := map[uint64]bool{}
	var last uint64
	inversions, dups := 0, 0
	for _, r := range recs {
		seq, err := strconv.ParseUint(header(r, HeaderSeq), 10, 64)
		if err != nil {
			t.Fatalf("record %q has no %s header: %v", r.Value, HeaderSeq, err)
		}
		if seen[seq] {
			dups++
			continue
		}
		seen[seq] = true
		if seq < last {
			inversions++
		}
		last = seq
	}
	if inversions != 0 || dups != 0 || len(seen) != want {
		t.Fatalf("%d records read: %d distinct (want %d), %d inversions, %d duplicates", len(recs), len(seen), want, inversions, dups)
	}
	for m := range skip {
		if seen[uint64(m+1)] {
			t.Fatalf("record %d reached Kafka, want it dead-lettered", m)
		}
	}
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// consumeMore reads what topic t holds past the first `from` records, for
// a moment.
func consumeMore(t *testing.T, c *kfake.Cluster, topic string, from int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().At(int64(from))}}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var out []*kgo.Record
	for ctx.Err() == nil {
		out = append(out, cl.PollFetches(ctx).Records()...)
	}
	return out
}

const (
	backlog = 3000
	bad     = 2000 // 0-based: sequence number 2001
)

// A record Kafka refuses for good, whatever the code, is found by bisecting
// in a logarithmic number of chunks and dead-lettered with its reason; the
// rest arrive in order, each once, and nothing is left behind.
func TestRefusedRecordIsDeadLetteredInOrderWithoutDuplicates(t *testing.T) {
	for _, tc := range []struct {
		err    *kerr.Error
		reason buffer.Reason
	}{
		{kerr.MessageTooLarge, ReasonTooLarge},
		{kerr.InvalidRecord, ReasonInvalidRecord},
		{kerr.CorruptMessage, ReasonInvalidRecord},
		{kerr.InvalidTopicException, ReasonInvalidTopic},
		{kerr.TopicAuthorizationFailed, ReasonTopicAuthorization},
	} {
		t.Run(tc.err.Message, func(t *testing.T) {
			c := newPartitionedCluster(t, 1, "t")
			b := newBuffer(t)
			appendBacklog(t, b, backlog, bad)
			answerPoison(c, tc.err.Code, 0)
			f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "t", "{device}")}}, b)
			if err != nil {
				t.Fatal(err)
			}
			stop := run(t, f)
			waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
			checkDelivery(t, c, backlog, bad)
			stop()
			st := f.Stats()
			if st.DeadLettered[tc.reason] != 1 || b.Stats().DeadLettered[tc.reason] != 1 {
				t.Fatalf("dead-lettered: forwarder %v, buffer %v; want 1 %s", st.DeadLettered, b.Stats().DeadLettered, tc.reason)
			}
			// A few chunks before and after; in between, galloping
			// (1, 2, 4, ... records) up to the bad one and halving
			// back: about 2·log2(3000) < 24.
			if st.Chunks > 2*12+6 {
				t.Fatalf("%d chunks to get past one record, want a logarithmic number", st.Chunks)
			}
		})
	}
}

// Errors that retrying cures are franz-go's to retry: the records arrive in
// order, each exactly once, and nothing is dead-lettered.
func TestRetriableErrorsMakeNoDuplicates(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  *kerr.Error
	}{
		{"NOT_LEADER_FOR_PARTITION", kerr.NotLeaderForPartition},
		{"REQUEST_TIMED_OUT", kerr.RequestTimedOut},
		{"NOT_ENOUGH_REPLICAS", kerr.NotEnoughReplicas},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newPartitionedCluster(t, 1, "t")
			b := newBuffer(t)
			appendBacklog(t, b, backlog, bad)
			n := answerPoison(c, tc.err.Code, 3)
			f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "t", "{device}")}}, b)
			if err != nil {
				t.Fatal(err)
			}
			stop := run(t, f)
			waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
			checkDelivery(t, c, backlog)
			stop()
			if n.Load() != 3 {
				t.Fatalf("the error was injected %d times, want 3", n.Load())
			}
			if st := f.Stats(); len(st.DeadLettered) != 0 {
				t.Fatalf("dead-lettered %v after a retriable error", st.DeadLettered)
			}
		})
	}
}

// Connections reset under load and a broker that answers late: franz-go
// retries what it sent (its idempotent producer makes the retries land
// once), the forwarder reports the silence and abandons nothing.
func TestNetworkResetAndSilentBrokerMakeNoDuplicates(t *testing.T) {
	t.Run("reset", func(t *testing.T) {
		c := newPartitionedCluster(t, 1, "t")
		b := newBuffer(t)
		appendBacklog(t, b, backlog, bad)
		var n atomic.Int64
		c.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
			c.KeepControl()
			if n.Add(1)%4 == 2 && n.Load() < 40 {
				return nil, errors.New("connection reset by the test"), true // kfake closes the connection
			}
			return nil, nil, false
		})
		f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "t", "{device}")},
			MaxBufferedRecords: 100}, b)
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, f)
		waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
		checkDelivery(t, c, backlog)
		stop()
	})
	t.Run("silent", func(t *testing.T) {
		c := newPartitionedCluster(t, 1, "t")
		b := newBuffer(t)
		appendBacklog(t, b, backlog, bad)
		wake := make(chan struct{})
		var slept atomic.Bool
		c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
			c.KeepControl()
			if slept.CompareAndSwap(false, true) {
				c.SleepControl(func() { <-wake }) // this request is answered only when the test says so
			}
			return nil, nil, false
		})
		f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "t", "{device}")},
			StallTimeout: 500 * time.Millisecond}, b)
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, f)
		waitFor(t, "the stall to be reported", func() bool { return strings.HasPrefix(f.Stats().LastError, errStalled.Error()) })
		if n := f.Stats().InFlight; n == 0 {
			t.Fatal("no records in flight while Kafka is silent: were they abandoned?")
		}
		close(wake)
		waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
		checkDelivery(t, c, backlog)
		waitFor(t, "the error to clear", func() bool { return f.Stats().LastError == "" })
		stop()
	})
}

// A route whose capture makes an invalid topic name (a space, or an empty
// level) dead-letters that record before producing; the others flow.
func TestInvalidTopicFromCaptureIsDeadLetteredAtOnce(t *testing.T) {
	c := newPartitionedCluster(t, 1, "telemetry.good")
	b := newBuffer(t)
	for _, topic := range []string{"s/good", "s/bad dev", "e/", "s/good"} {
		if _, err := b.AppendWait(context.Background(), &buffer.Record{Topic: topic, Payload: []byte(topic)}); err != nil {
			t.Fatal(err)
		}
	}
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "telemetry.{device}", "{device}"),
		route(t, "e/{device}", "{device}", "{device}")}}, b) // "e/" makes the topic ""
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
	recs := consume(t, c, "telemetry.good", 2)
	stop()
	if len(recs) != 2 {
		t.Fatalf("%d records in telemetry.good, want 2", len(recs))
	}
	if n := f.Stats().DeadLettered[ReasonInvalidTopic]; n != 2 {
		t.Fatalf("dead-lettered %v, want 2 for %s", f.Stats().DeadLettered, ReasonInvalidTopic)
	}
	if f.Stats().Chunks > 3 {
		t.Fatalf("%d chunks: invalid topics must not cost Kafka round trips", f.Stats().Chunks)
	}
}

// A topic that does not exist holds back only its own records: the other
// device's records flow, and the missing topic's are dead-lettered after
// UnknownTopicTimeout.
func TestMissingTopicHoldsBackOnlyItsRecords(t *testing.T) {
	c := newPartitionedCluster(t, 1, "telemetry.a")
	b := newBuffer(t)
	for i := range 20 {
		dev := "a"
		if i%2 == 1 {
			dev = "b" // telemetry.b does not exist
		}
		if _, err := b.AppendWait(context.Background(), &buffer.Record{Topic: "s/" + dev, Payload: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "telemetry.{device}", "{device}")},
		UnknownTopicTimeout: 3 * time.Second}, b)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	stop := run(t, f)
	defer stop()
	recs := consume(t, c, "telemetry.a", 10)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("device a's records took %v: held back by device b's missing topic", d)
	}
	for i, r := range recs {
		if string(r.Value) != fmt.Sprint(2*i) {
			t.Fatalf("record %d is %q: out of order", i, r.Value)
		}
	}
	if n := b.Stats().Records; n < 10 {
		t.Fatalf("buffer holds %d records, want device b's 10 still there (and a's behind the first of them)", n)
	}
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
	if n := b.Stats().DeadLettered[ReasonUnknownTopic]; n != 10 {
		t.Fatalf("dead-lettered %v, want 10 for %s", b.Stats().DeadLettered, ReasonUnknownTopic)
	}
}

// The window never holds more than MaxBufferedBytes (but always one
// record, however large).
func TestWindowIsBoundedByBytes(t *testing.T) {
	c := newPartitionedCluster(t, 1, "t")
	b := newBuffer(t)
	payload := bytes.Repeat([]byte("x"), 100_000)
	for range 30 {
		if _, err := b.AppendWait(context.Background(), &buffer.Record{Topic: "s/a", Payload: payload}); err != nil {
			t.Fatal(err)
		}
	}
	var maxInFlight atomic.Int64
	c.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		n := int64(0)
		for _, rt := range kreq.(*kmsg.ProduceRequest).Topics {
			for _, rp := range rt.Partitions {
				n += int64(len(rp.Records))
			}
		}
		for {
			m := maxInFlight.Load()
			if n <= m || maxInFlight.CompareAndSwap(m, n) {
				break
			}
		}
		return nil, nil, false
	})
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/+", "t", "")},
		MaxBufferedBytes: 250_000}, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
	stop()
	if m := maxInFlight.Load(); m > 350_000 {
		t.Fatalf("a produce request carried %d bytes with a 250,000-byte window", m)
	}
	if f.Stats().Chunks < 10 {
		t.Fatalf("%d chunks for 3 MB through a 250 KB window", f.Stats().Chunks)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err    error
		class  class
		reason buffer.Reason
	}{
		{kerr.MessageTooLarge, rejectRecord, ReasonTooLarge},
		{fmt.Errorf("produce: %w", kerr.InvalidRecord), rejectRecord, ReasonInvalidRecord},
		{kerr.CorruptMessage, rejectRecord, ReasonInvalidRecord},
		{kerr.TopicAuthorizationFailed, rejectTopic, ReasonTopicAuthorization},
		{kerr.InvalidTopicException, rejectTopic, ReasonInvalidTopic},
		{kerr.UnknownTopicOrPartition, missingTopic, ReasonUnknownTopic},
		{kerr.NotLeaderForPartition, retry, ""},
		{kerr.RequestTimedOut, retry, ""},
		{kerr.ClusterAuthorizationFailed, retry, ""}, // not the record's fault: wait, never dead-letter
		{kgo.ErrClientClosed, retry, ""},
		{context.DeadlineExceeded, retry, ""},
	} {
		c, r := classify(tc.err)
		if c != tc.class || r != tc.reason {
			t.Errorf("classify(%v) = %v, %q; want %v, %q", tc.err, c, r, tc.class, tc.reason)
		}
	}
}

func TestValidTopic(t *testing.T) {
	for name, ok := range map[string]bool{
		"telemetry.dev-1_a": true, "": false, ".": false, "..": false, "bad dev": false,
		"a/b": false, "ä": false, string(bytes.Repeat([]byte("a"), 249)): true, string(bytes.Repeat([]byte("a"), 250)): false,
	} {
		if err := validTopic(name); (err == nil) != ok {
			t.Errorf("validTopic(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

// Several records Kafka refuses for good (here: over the broker's
// message.max.bytes, refused per partition as Kafka does), two of them
// next to each other in one partition and others in other partitions at
// the same time: exactly those are dead-lettered, and every other record
// arrives once, in order per device.
func TestSeveralRefusedRecordsInSeveralPartitions(t *testing.T) {
	c := newClusterWith(t, 4, []kfake.Opt{kfake.BrokerConfigs(map[string]string{"message.max.bytes": "3000"})}, "t")
	b := newBuffer(t)
	const n, devs = 2000, 8
	bad := map[int]bool{500: true, 501: true, 508: true, 1203: true, 1999: true}
	for i := range n {
		p := fmt.Appendf(nil, "%d", i)
		if bad[i] {
			p = append(p, bytes.Repeat([]byte("x"), 5000)...)
		}
		if err := b.Append(&buffer.Record{Topic: fmt.Sprintf("s/d%d", i%devs), Payload: p}, func(uint64, error) {}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the backlog to be durable", func() bool { st := b.Stats(); return st.Records == n && st.TailRecords == 0 })
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "t", "{device}")}}, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
	stop()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("t"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// Read until every record is there (up to 30 s: a loaded CI machine
	// took more than 3), then half a second more for any duplicate.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seen := map[int]bool{}
	last := map[string]int{}
	for ctx.Err() == nil {
		all := len(seen) >= n-len(bad)
		pollCtx, stop := ctx, context.CancelFunc(func() {})
		if all {
			pollCtx, stop = context.WithTimeout(ctx, 500*time.Millisecond)
		}
		cl.PollFetches(pollCtx).EachRecord(func(r *kgo.Record) {
			i, err := strconv.Atoi(string(r.Value))
			if err != nil {
				t.Errorf("record %.20q reached Kafka", r.Value)
				return
			}
			if seen[i] {
				t.Errorf("record %d twice", i)
			}
			seen[i] = true
			if prev, ok := last[string(r.Key)]; ok && i < prev {
				t.Errorf("device %s: %d after %d", r.Key, i, prev)
			}
			last[string(r.Key)] = i
		})
		stop()
		if all {
			break
		}
	}
	if len(seen) != n-len(bad) {
		t.Fatalf("%d distinct records in Kafka, want %d", len(seen), n-len(bad))
	}
	if got := b.Stats().DeadLettered[ReasonTooLarge]; got != uint64(len(bad)) {
		t.Fatalf("dead-lettered %v, want %d for %s", b.Stats().DeadLettered, len(bad), ReasonTooLarge)
	}
	t.Logf("%d chunks", f.Stats().Chunks)
}

// A missing topic whose records arrive first and fill the window holds
// nothing else back: the other topic's records are delivered and removed
// from the buffer one by one, and after a clean restart none of them is
// sent again.
func TestParkedTopicWithFullWindowHoldsNothingBack(t *testing.T) {
	c := newPartitionedCluster(t, 1, "telemetry.a")
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := buffer.Open(path, buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { b.Close() }()
	add := func(dev string, n int) {
		for i := range n {
			if err := b.Append(&buffer.Record{Topic: "s/" + dev, Payload: fmt.Appendf(nil, "%d", i)}, func(uint64, error) {}); err != nil {
				t.Fatal(err)
			}
		}
	}
	add("b", 30) // telemetry.b does not exist: more than the window
	add("a", 200)
	waitFor(t, "the records to be durable", func() bool { st := b.Stats(); return st.Records == 230 && st.TailRecords == 0 })
	cfg := Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "telemetry.{device}", "{device}")},
		MaxBufferedRecords: 20, UnknownTopicTimeout: -1}
	f, err := New(cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	recs := consume(t, c, "telemetry.a", 200)
	waitFor(t, "a's records to leave the buffer", func() bool { return b.Stats().Records == 30 })
	if !strings.Contains(f.Stats().LastError, "UNKNOWN_TOPIC") {
		t.Errorf("forwarder reports %q while telemetry.b is missing", f.Stats().LastError)
	}
	for i, r := range recs {
		if string(r.Value) != fmt.Sprint(i) {
			t.Fatalf("record %d is %q: out of order", i, r.Value)
		}
	}

	// The topic appears: its 30 records, more than the window, go out in
	// order, and new ones after them.
	createTopic(t, c, "telemetry.b")
	add("b", 5)
	recs = consume(t, c, "telemetry.b", 35)
	for i, r := range recs {
		if want := fmt.Sprint(i % 30); string(r.Value) != want { // 0..29 waited, then 0..4 new
			t.Fatalf("telemetry.b record %d is %q: out of order", i, r.Value)
		}
	}
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
	stop()

	// A clean restart: what Kafka acknowledged is not sent again.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if b, err = buffer.Open(path, buffer.Options{}); err != nil {
		t.Fatal(err)
	}
	f, err = New(cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	stop = run(t, f)
	time.Sleep(time.Second)
	stop()
	if more := consumeMore(t, c, "telemetry.a", 200); len(more) != 0 {
		t.Fatalf("%d records sent again after a clean restart", len(more))
	}
}

// createTopic creates a one-partition topic on c.
func createTopic(t *testing.T, c *kfake.Cluster, name string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = name, 1, 1
	req.Topics = append(req.Topics, rt)
	if _, err := req.RequestWith(context.Background(), cl); err != nil {
		t.Fatal(err)
	}
}

// Kafka refusing a whole topic in its produce responses (an ACL that lets
// ferry describe the topic but not write to it) costs a few chunks per
// record for the first few, then the topic's waiting records are
// dead-lettered at once; the other topic flows.
func TestTopicRefusedInProduceResponsesIsDeadLetteredWhole(t *testing.T) {
	c := newPartitionedCluster(t, 1, "t", "denied")
	b := newBuffer(t)
	for i := range 600 {
		topic, payload := "s/ok", fmt.Appendf(nil, "%d", i)
		if i%2 == 1 {
			topic, payload = "s/denied", append(payload, "DENIED"...)
		}
		if err := b.Append(&buffer.Record{Topic: topic, Payload: payload}, func(uint64, error) {}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the records to be durable", func() bool { return b.Stats().Records == 600 })
	c.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := kreq.(*kmsg.ProduceRequest)
		denied := false
		for _, rt := range req.Topics {
			for _, rp := range rt.Partitions {
				denied = denied || bytes.Contains(rp.Records, []byte("DENIED"))
			}
		}
		if !denied {
			return nil, nil, false
		}
		resp := refuse(req, func(rp kmsg.ProduceRequestTopicPartition) int16 {
			if !bytes.Contains(rp.Records, []byte("DENIED")) {
				return kerr.NotLeaderForPartition.Code // retried: this partition was not refused
			}
			return kerr.TopicAuthorizationFailed.Code
		})
		return resp, nil, true
	})
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/ok", "t", "ok"), route(t, "s/{device}", "{device}", "{device}")}}, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
	stop()
	if n := b.Stats().DeadLettered[ReasonTopicAuthorization]; n != 300 {
		t.Fatalf("dead-lettered %v, want the 300 records of the refused topic", b.Stats().DeadLettered)
	}
	if len(consume(t, c, "t", 300)) != 300 {
		t.Fatal("the other topic's records did not all arrive")
	}
	if n := f.Stats().Chunks; n > 120 {
		t.Fatalf("%d chunks for a refused topic of 300 records", n)
	}
	t.Logf("%d chunks", f.Stats().Chunks)
}
