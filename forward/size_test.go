package forward

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferry-edge/ferry/buffer"
)

func TestSizerBounds(t *testing.T) {
	for _, tc := range []struct {
		name          string
		rtt           time.Duration
		perRecord     float64 // ns
		recSize       float64
		records, byts int
	}{
		{"nothing measured", 0, 0, 0, floorRecords, floorBytes},
		{"a LAN: the floor", 300 * time.Microsecond, 2500, 300, floorRecords, floorBytes},
		{"a link of 2 ms", 2 * time.Millisecond, 2500, 300, 4800, 4800 * 300 * 5 / 4},
		{"a WAN of 50 ms: the configured bounds", 50 * time.Millisecond, 3000, 300, 20000, 16 << 20},
		{"large records: bytes bound", 10 * time.Millisecond, 20000, 10000, 3000, 16 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := newSizer(20000, 16<<20)
			z.perRecord, z.recSize = tc.perRecord, tc.recSize
			records, byts := z.bounds(tc.rtt)
			if records != tc.records || byts != tc.byts {
				t.Fatalf("bounds(%v) with %.0f ns a record of %.0f bytes: %d records, %d bytes; want %d, %d",
					tc.rtt, tc.perRecord, tc.recSize, records, byts, tc.records, tc.byts)
			}
		})
	}
	// Configured bounds below the floor are the floor.
	if r, b := newSizer(100, 64<<10).unreachable(); r != 100 || b != 64<<10 {
		t.Fatalf("a window configured at 100 records and 64 KiB: floor %d, %d", r, b)
	}
}

// The window is sized to the link: at its floor while Kafka does not
// answer (a full 20,000-record window would only wait, in memory), and
// larger over a link whose round trip a chunk of the floor cannot fill.
func TestWindowSizedToTheLink(t *testing.T) {
	const n = 20000
	measure := func(t *testing.T, delay time.Duration, silent bool) (maxInFlight int64, delivered uint64) {
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
		stop := make(chan struct{})
		t.Cleanup(func() { close(stop) })
		c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
			c.KeepControl()
			c.SleepControl(func() {
				if silent {
					<-stop
					return
				}
				time.Sleep(delay) // the link's round trip
			})
			return nil, nil, false
		})
		f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/+", "t", "")},
			StatusTopic: "ferry.status", ShutdownTimeout: 200 * time.Millisecond}, b)
		if err != nil {
			t.Fatal(err)
		}
		var peak atomic.Int64
		ctx, cancel := context.WithCancel(context.Background())
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			for ctx.Err() == nil {
				if v := int64(f.Stats().InFlight); v > peak.Load() {
					peak.Store(v)
				}
				time.Sleep(time.Millisecond)
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
		return peak.Load(), f.Stats().Delivered
	}
	t.Run("Kafka silent", func(t *testing.T) {
		if peak, _ := measure(t, 0, true); peak > floorRecords/2 {
			t.Fatalf("%d records in flight to a Kafka that does not answer, want at most a chunk of the floor (%d)", peak, floorRecords/2)
		}
	})
	t.Run("a 30 ms link", func(t *testing.T) {
		peak, _ := measure(t, 30*time.Millisecond, false)
		t.Logf("at most %d records in flight", peak)
		if peak <= floorRecords/2 {
			t.Fatalf("at most %d records in flight over a 30 ms link: the window stayed at its floor", peak)
		}
	})
}
