package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestKafkaOutage produces records before, during and after a 2s outage and
// checks that every record arrives, in order per key, and that records
// produced during the outage were acknowledged only after it.
func TestKafkaOutage(t *testing.T) {
	k := NewKafka(t, "telemetry")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	p, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers()...), kgo.DefaultProduceTopic("telemetry"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	const n = 300
	var acked atomic.Int64
	errs := make(chan error, n)
	produce := func(i int) {
		r := &kgo.Record{Key: []byte(DeviceName(i % 3)), Value: []byte(strconv.Itoa(i))}
		p.Produce(ctx, r, func(_ *kgo.Record, err error) {
			acked.Add(1)
			errs <- err
		})
	}

	for i := range 100 {
		produce(i)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	k.SetReachable(false)
	for i := 100; i < 200; i++ {
		produce(i)
		time.Sleep(10 * time.Millisecond) // spread over ~1s of the outage
	}
	time.Sleep(time.Second)
	if got := acked.Load(); got != 100 {
		t.Fatalf("%d records acknowledged during the outage, want the 100 from before it", got)
	}
	k.SetReachable(true)
	for i := 200; i < n; i++ {
		produce(i)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("produce: %v", err)
		}
	}

	got := consumeAll(t, ctx, k.Brokers(), "telemetry", n)
	last := map[string]int{}
	for _, r := range got {
		v, _ := strconv.Atoi(string(r.Value))
		if prev, ok := last[string(r.Key)]; ok && v <= prev {
			t.Errorf("key %s: value %d after %d", r.Key, v, prev)
		}
		last[string(r.Key)] = v
	}
}

// TestKafkaUnreachableResetsNewConnections checks that a connection made
// during an outage is reset at once rather than left hanging.
func TestKafkaUnreachableResetsNewConnections(t *testing.T) {
	k := NewKafka(t)
	k.SetReachable(false)
	c, err := net.Dial("tcp", k.Brokers()[0])
	if err != nil {
		return // reset while connecting: as good as refused
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("read during outage: %v, want a reset or EOF", err)
	}
	if !errors.Is(err, io.EOF) {
		t.Logf("read during outage: %v", err)
	}
}

// consumeAll reads n records of topic from the start.
func consumeAll(t *testing.T, ctx context.Context, brokers []string, topic string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for len(recs) < n {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of %d records: %v", len(recs), n, err)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Logf("fetch %s/%d: %v", topic, p, err) })
		recs = append(recs, fs.Records()...)
	}
	if len(recs) != n {
		t.Fatalf("consumed %d records, want %d", len(recs), n)
	}
	return recs
}

// produceSync produces records and fails the test on error.
func produceSync(t *testing.T, brokers []string, topic string, recs ...*kgo.Record) {
	t.Helper()
	p, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(fmt.Errorf("produce: %w", err))
	}
}
