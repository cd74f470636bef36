package forward

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/buffer"
)

// A slot that leaves the window keeps no reference to its record: slots
// come in slabs, and a released slot's payload would keep the whole block
// its Read decoded alive for as long as any slot of its slab is in the
// window (flat out, that tripled the decoded blocks' live memory).
func TestReleasedSlotsForgetTheirRecords(t *testing.T) {
	w := newWindow(10, 1<<20)
	slab := make([]slot, 4)
	for i := range slab {
		s := &slab[i]
		s.seq, s.rec = uint64(i+1), kgo.Record{Topic: "t", Value: []byte("payload")}
		s.kr, s.size, s.state = &s.rec, 7, acked
		w.add(s)
	}
	slab[1].state = pending // 1 is released in order; 3 and 4 behind a record that waits
	if seq := w.popReleasable(^uint64(0)); seq != 1 {
		t.Fatalf("popReleasable: %d, want 1", seq)
	}
	if seqs := w.popAcked(); len(seqs) != 2 {
		t.Fatalf("popAcked: %v, want [3 4]", seqs)
	}
	for _, i := range []int{0, 2, 3} {
		if s := &slab[i]; s.kr != nil || s.rec.Value != nil || s.rec.Topic != "" {
			t.Errorf("slot %d left the window holding its record: %+v", s.seq, s.rec)
		}
	}
	if s := &slab[1]; s.rec.Value == nil || len(w.slots) != 1 || w.bytes != 7 {
		t.Fatalf("the waiting record: %+v, window %d slots, %d bytes", s.rec, len(w.slots), w.bytes)
	}
}

// smallBacklog returns a buffer holding n small records of topic s/a, durable.
func smallBacklog(t *testing.T, n int) *buffer.Buffer {
	t.Helper()
	b := newBuffer(t)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		rec := &buffer.Record{Topic: "s/a", Payload: fmt.Appendf(nil, "%d", i), QoS: 1, ReceivedAt: time.Now()}
		if err := b.Append(rec, func(uint64, error) { wg.Done() }); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	return b
}

// peakInFlight runs f until wait returns, and returns the most records it
// had in flight at once (sampled every 100 µs).
func peakInFlight(t *testing.T, f *Forwarder, wait func()) int64 {
	t.Helper()
	var peak atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for ctx.Err() == nil {
			if v := int64(f.Stats().InFlight); v > peak.Load() {
				peak.Store(v)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	stopRun := run(t, f)
	wait()
	cancel()
	<-sampled
	stopRun()
	return peak.Load()
}

// The window is at its floor until Kafka answers (a full 20,000-record
// window would only wait, in memory, through an outage), and sized to
// the link once it does, at least linkFloorRecords: above the floor.
func TestWindowAtItsFloorUntilKafkaAnswers(t *testing.T) {
	const n = 20000
	measure := func(t *testing.T, silent bool) (peak int64) {
		c := newCluster(t, "t")
		b := smallBacklog(t, n)
		if silent {
			silenceProduce(t, c)
		}
		f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/+", "t", "")},
			StatusTopic: "ferry.status", ShutdownTimeout: 200 * time.Millisecond}, b)
		if err != nil {
			t.Fatal(err)
		}
		return peakInFlight(t, f, func() {
			if silent {
				time.Sleep(time.Second)
			} else {
				waitFor(t, "the records delivered", func() bool { return f.Stats().Delivered >= n })
			}
		})
	}
	t.Run("Kafka silent", func(t *testing.T) {
		if peak := measure(t, true); peak > floorRecords/2 {
			t.Fatalf("%d records in flight to a Kafka that does not answer, want at most a chunk of the floor (%d)", peak, floorRecords/2)
		}
	})
	t.Run("Kafka answering", func(t *testing.T) {
		if peak := measure(t, false); peak <= floorRecords/2 {
			t.Fatalf("at most %d records in flight through a backlog of %d: the window stayed at its floor", peak, n)
		}
	})
}
