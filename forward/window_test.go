package forward

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/buffer"
)

// The window is at its floor until Kafka answers (a full 20,000-record
// window would only wait, in memory, through an outage) and at its
// configured bounds once it does, where a deep backlog needs them.
func TestWindowAtItsFloorUntilKafkaAnswers(t *testing.T) {
	const n = 20000
	measure := func(t *testing.T, silent bool) (peak int64) {
		c := newCluster(t, "t")
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
		if silent {
			silenceProduce(t, c)
		}
		f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/+", "t", "")},
			StatusTopic: "ferry.status", ShutdownTimeout: 200 * time.Millisecond}, b)
		if err != nil {
			t.Fatal(err)
		}
		var max atomic.Int64
		ctx, cancel := context.WithCancel(context.Background())
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			for ctx.Err() == nil {
				if v := int64(f.Stats().InFlight); v > max.Load() {
					max.Store(v)
				}
				time.Sleep(100 * time.Microsecond)
			}
		}()
		stopRun := run(t, f)
		if silent {
			time.Sleep(time.Second)
		} else {
			waitFor(t, "the records delivered", func() bool { return f.Stats().Delivered >= n })
		}
		cancel()
		<-sampled
		stopRun()
		return max.Load()
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
