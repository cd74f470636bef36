package forward

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/twmb/franz-go/pkg/kerr"
)

// Records settled at once (an invalid topic from a capture, no route),
// more than the window holds, behind a parked topic: they leave the window
// (and the buffer), so the records behind them flow; found in review.
func TestSettledRecordsBehindParkedTopicLeaveTheWindow(t *testing.T) {
	for _, filler := range []string{"s/bad dev", "x/unrouted"} {
		t.Run(filler, func(t *testing.T) {
			c := newPartitionedCluster(t, 1, "telemetry.a")
			b := newBuffer(t)
			add := func(topic string, n int) {
				for i := range n {
					if _, err := b.AppendWait(context.Background(), &buffer.Record{Topic: topic, Payload: fmt.Appendf(nil, "%d", i)}); err != nil {
						t.Fatal(err)
					}
				}
			}
			add("s/b", 3)   // telemetry.b missing
			add(filler, 30) // settled at admit
			add("s/a", 10)
			f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "telemetry.{device}", "{device}")},
				MaxBufferedRecords: 20, UnknownTopicTimeout: -1}, b)
			if err != nil {
				t.Fatal(err)
			}
			stop := run(t, f)
			defer stop()
			deadline := time.Now().Add(5 * time.Second)
			got := 0
			for time.Now().Before(deadline) {
				if f.Stats().Delivered >= 10 {
					got = 10
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if got < 10 {
				t.Fatalf("wedged behind the parked topic: delivered %d of 10", f.Stats().Delivered)
			}
			createTopic(t, c, "telemetry.b")
			waitFor(t, "the buffer to drain", func() bool { return f.Stats().Delivered == 13 && b.Stats().Records == 0 })
		})
	}
}

// A chunk where topic A's partition 0 is refused for good and its
// partition 1 answers UNKNOWN_TOPIC_OR_PARTITION: the topic is parked
// before a bisection is chosen, which then has nothing of A to start on
// (found in review: it dereferenced the parked record).
func TestSettleParksBeforeBisecting(t *testing.T) {
	b := newBuffer(t)
	f, err := New(Config{Brokers: []string{"127.0.0.1:1"}, Routes: []Route{route(t, "s/{device}", "telemetry.{device}", "{device}")}}, b)
	if err != nil {
		t.Fatal(err)
	}
	p := newPass(f, nil)
	mk := func(seq uint64, topic string, part int32, err error) *slot {
		s := &slot{seq: seq, state: sent, done: true, err: err, partition: part}
		s.rec.Topic = topic
		s.kr = &s.rec
		s.size = 10
		p.w.add(s)
		p.chunk = append(p.chunk, s)
		return s
	}
	mk(1, "A", 0, kerr.InvalidRecord)
	mk(2, "B", 0, kerr.NotLeaderForPartition)
	mk(3, "A", 1, kerr.UnknownTopicOrPartition)
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("settle panicked: %v", r)
		}
	}()
	p.settle(time.Now())
}

// A parked topic with more records than the window drains, in order,
// without new records arriving.
func TestParkedTopicDrainsWithoutNewRecords(t *testing.T) {
	c := newPartitionedCluster(t, 1, "telemetry.a")
	b := newBuffer(t)
	for i := range 95 {
		if _, err := b.AppendWait(context.Background(), &buffer.Record{Topic: "s/b", Payload: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "telemetry.{device}", "{device}")},
		MaxBufferedRecords: 20, UnknownTopicTimeout: -1}, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	defer stop()
	time.Sleep(1500 * time.Millisecond)
	createTopic(t, c, "telemetry.b")
	recs := consume(t, c, "telemetry.b", 95)
	for i, r := range recs {
		if string(r.Value) != fmt.Sprint(i) {
			t.Fatalf("record %d is %q", i, r.Value)
		}
	}
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
}

// Records waiting for a missing topic follow new routes set while they
// wait (a reload that fixes the topic name): they go to the new topic, in
// order and ahead of the records that arrive after the reload (found in
// review: those overtook them), and nothing is left behind.
func TestParkedRecordsFollowNewRoutes(t *testing.T) {
	c := newPartitionedCluster(t, 1, "telemetry.fixed")
	b := newBuffer(t)
	for i := range 30 {
		if _, err := b.AppendWait(context.Background(), &buffer.Record{Topic: "s/dev", Payload: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "telemetry.typo", "{device}")},
		MaxBufferedRecords: 20, UnknownTopicTimeout: -1}, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	defer stop()
	waitFor(t, "the missing topic to be reported", func() bool { return strings.Contains(f.Stats().LastError, "UNKNOWN_TOPIC") })
	if err := f.SetRoutes([]Route{route(t, "s/{device}", "telemetry.fixed", "{device}")}); err != nil {
		t.Fatal(err)
	}
	for i := 30; i < 1030; i++ { // records arriving after the reload must not overtake the waiting ones
		if err := b.Append(&buffer.Record{Topic: "s/dev", Payload: fmt.Appendf(nil, "%d", i)}, func(uint64, error) {}); err != nil {
			t.Fatal(err)
		}
	}
	recs := consume(t, c, "telemetry.fixed", 1030)
	for i, r := range recs {
		if string(r.Value) != fmt.Sprint(i) {
			t.Fatalf("record %d is %q: out of order", i, r.Value)
		}
	}
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
	if st := f.Stats(); st.Unrouted != 0 || len(st.DeadLettered) != 0 {
		t.Fatalf("stats %+v", st)
	}
}
