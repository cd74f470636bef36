package agent

import (
	"sync/atomic"
	"time"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/mqtt"
)

// clockSink marks the records received while the kernel reports the
// system clock unsynchronized (a board without a real-time clock, before
// NTP): their receive time, which is their Kafka timestamp, may be far
// off, and forward says so in a header (ferry.clock: unsynced). The
// kernel is asked at most once a second.
type clockSink struct {
	next mqtt.Sink
	// synced reports whether the clock is synchronized, and whether it
	// can tell (see clock_linux.go).
	synced func() (synced, known bool)

	checked  atomic.Int64 // monotonic nanoseconds (since start) of the last question
	unsynced atomic.Bool
}

// start is the base of the monotonic times clockSink keeps.
var start = time.Now()

// HasRoom is the next sink's, if it tells (see mqtt.Sink).
func (s *clockSink) HasRoom(n int) bool {
	if r, ok := s.next.(interface{ HasRoom(int) bool }); ok {
		return r.HasRoom(n)
	}
	return true
}

func (s *clockSink) Append(rec *buffer.Record, done func(seq uint64, err error)) error {
	now := int64(time.Since(start))
	if last := s.checked.Load(); (last == 0 || now-last >= int64(time.Second)) && s.checked.CompareAndSwap(last, now) {
		synced, known := s.synced()
		s.unsynced.Store(known && !synced)
	}
	rec.ClockUnsynced = s.unsynced.Load()
	return s.next.Append(rec, done)
}
