package agent

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/buffer"
)

// sinkFunc is a Sink that records what it is given.
type recordingSink struct{ got []buffer.Record }

func (s *recordingSink) Append(rec *buffer.Record, done func(uint64, error)) error {
	s.got = append(s.got, *rec)
	done(uint64(len(s.got)), nil)
	return nil
}

// Records are marked while the kernel says the clock is not synchronized,
// the kernel is asked at most once a second, and a clock it cannot read
// marks nothing.
func TestClockSinkMarksUnsyncedRecords(t *testing.T) {
	var synced, known atomic.Bool
	var asked atomic.Int64
	next := &recordingSink{}
	s := &clockSink{next: next, synced: func() (bool, bool) { asked.Add(1); return synced.Load(), known.Load() }}
	appendOne := func() bool {
		if err := s.Append(&buffer.Record{Topic: "t"}, func(uint64, error) {}); err != nil {
			t.Fatal(err)
		}
		return next.got[len(next.got)-1].ClockUnsynced
	}
	known.Store(true)
	if !appendOne() {
		t.Fatal("not marked while unsynchronized")
	}
	for range 100 {
		appendOne()
	}
	if n := asked.Load(); n != 1 {
		t.Fatalf("asked the kernel %d times for 101 records in well under a second", n)
	}
	synced.Store(true)
	time.Sleep(1100 * time.Millisecond)
	if appendOne() {
		t.Fatal("marked once synchronized")
	}
	synced.Store(false)
	known.Store(false)
	time.Sleep(1100 * time.Millisecond)
	if appendOne() {
		t.Fatal("marked although the clock's state is unknown")
	}
}
