package buffer

import (
	"encoding/binary"
	"slices"
	"time"
)

// The wall clock. A record's receive time is the wall clock's, and so is
// MaxAge's cutoff: a board that boots with a stale clock and then steps it
// forward by days when NTP syncs would see every record received before
// the sync as days old, and drop it. So the committer compares the wall
// clock with the monotonic one as it goes (watchClock): a forward step is
// recorded with the first sequence number after it, and the records before
// that number count as younger by the step when MaxAge is applied. The
// steps are kept in the meta bucket, so a restart keeps them; order never
// depends on the clock (sequence numbers give it). A backward step makes
// records look younger, which delays their expiry at worst: it is logged,
// not compensated.

// clockStep is a forward step of the wall clock: records received before
// at (on the clock before the step) were received before it.
type clockStep struct {
	at    time.Time
	delta time.Duration
}

// stepThreshold is the least difference between wall and monotonic time
// that counts as a step: NTP slews by at most 500 ppm, which over the
// committer's longest sleep (fileCheckInterval) is 5 ms.
const stepThreshold = time.Second

// maxClockSteps bounds the steps kept: the oldest two merge into one
// (their sum applied up to the later boundary: records between live
// longer, never shorter).
const maxClockSteps = 16

// adjust is how much younger a record received at t counts for MaxAge:
// the steps after it.
func (s *state) adjust(t time.Time) time.Duration {
	var d time.Duration
	for _, c := range s.steps {
		if t.Before(c.at) {
			d += c.delta
		}
	}
	return d
}

// ageTime is the receive time MaxAge sees for the encoded record raw:
// its receive time, younger by the clock steps after it; the zero time
// (no age) for a record received while the clock was not synchronized.
func (s *state) ageTime(raw []byte) time.Time {
	if recordFlags(raw)&flagClockUnsynced != 0 {
		return time.Time{}
	}
	t := recordTime(raw)
	return t.Add(s.adjust(t))
}

// addStep records a step, merging the oldest two when there are too
// many.
func (s *state) addStep(c clockStep) {
	steps := append(slices.Clone(s.steps), c)
	for len(steps) > maxClockSteps {
		steps[1].delta += steps[0].delta
		steps = steps[1:]
	}
	s.steps = steps
}

// encodeSteps and decodeSteps are the steps' form in the meta bucket.
func encodeSteps(steps []clockStep) []byte {
	v := make([]byte, 0, 16*len(steps))
	for _, c := range steps {
		v = binary.BigEndian.AppendUint64(v, uint64(c.at.UnixNano()))
		v = binary.BigEndian.AppendUint64(v, uint64(c.delta))
	}
	return v
}

func decodeSteps(v []byte) []clockStep {
	var steps []clockStep
	for ; len(v) >= 16; v = v[16:] {
		steps = append(steps, clockStep{at: time.Unix(0, int64(binary.BigEndian.Uint64(v))), delta: time.Duration(binary.BigEndian.Uint64(v[8:]))})
	}
	return steps
}

// clockWatch remembers the last look at the clocks.
type clockWatch struct {
	wall time.Time // wall clock only
	mono time.Time // with its monotonic reading
}

// watchClock looks at the clocks; a forward step since the last look is
// recorded in b.st (the next commit stores it) and the head's receive
// time counts younger by it. It runs on the committer.
func (b *Buffer) watchClock() {
	w := &b.clock
	now, wall := time.Now(), b.opts.Now().Round(0)
	if w.mono.IsZero() {
		w.wall, w.mono = wall, now
		return
	}
	d := wall.Sub(w.wall) - now.Sub(w.mono)
	before := w.wall.Add(now.Sub(w.mono)) // what the wall clock would read without the step
	w.wall, w.mono = wall, now
	switch {
	case d >= stepThreshold:
		b.mu.Lock()
		b.st.addStep(clockStep{at: before, delta: d})
		if !b.headAt.IsZero() {
			b.headAt = b.headAt.Add(d)
		}
		b.mu.Unlock()
		b.log.Warn("buffer: the wall clock stepped forward; the records received before keep their age for max_age",
			"step", d.Round(time.Millisecond), "now", wall.Format(time.RFC3339))
	case d <= -stepThreshold:
		b.log.Warn("buffer: the wall clock stepped back; records received before it look younger than they are for max_age until it catches up",
			"step", d.Round(time.Millisecond), "now", wall.Format(time.RFC3339))
	}
}
