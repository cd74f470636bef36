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

func (s *clockSink) Append(rec *buffer.Record, done func(seq uint64, err error)) error {
	s.mark(rec)
	return s.next.Append(rec, done)
}

// TryAppend is the next sink's (see mqtt.Sink); one without it waits.
func (s *clockSink) TryAppend(rec *buffer.Record, done func(seq uint64, err error)) (bool, error) {
	s.mark(rec)
	if t, ok := s.next.(interface {
		TryAppend(*buffer.Record, func(uint64, error)) (bool, error)
	}); ok {
		return t.TryAppend(rec, done)
	}
	return true, s.next.Append(rec, done)
}

// mark says in rec whether the clock is synchronized, asking at most once
// a second.
func (s *clockSink) mark(rec *buffer.Record) {
	now := int64(time.Since(start))
	if last := s.checked.Load(); (last == 0 || now-last >= int64(time.Second)) && s.checked.CompareAndSwap(last, now) {
		synced, known := s.synced()
		s.unsynced.Store(known && !synced)
	}
	rec.ClockUnsynced = s.unsynced.Load()
}
