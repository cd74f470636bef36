package forward

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// window holds the records read from the buffer and not yet released, in
// sequence order, bounded by count and by bytes. Only Run's goroutine
// touches it, except the outcome fields that a produce's promise sets
// (under mu).
type window struct {
	maxRecords, maxBytes int

	slots []*slot // oldest first
	bytes int     // sum of the slots' sizes

	mu sync.Mutex // guards slot.outcome and slot.err while a chunk is in flight
}

type state uint8

const (
	pending state = iota // to be produced
	sent                 // produced, outcome not known yet
	acked                // Kafka acknowledged it
	settled              // done without delivery: unrouted or dead-lettered
)

type slot struct {
	seq uint64
	kr  *kgo.Record // &rec; nil once settled without a Kafka record
	rec kgo.Record
	// Room for rec's headers and short header values and key, so that a
	// common record needs no allocation of its own (see route).
	hdrs  [6]kgo.RecordHeader
	buf   [80]byte
	size  int
	state state

	// Set by the promise, read after the chunk's flush.
	done bool
	err  error
	// partition is where the failed produce placed the record; -1 when it
	// never reached a partition (the topic's metadata failed).
	partition int32
}

// forget drops what a slot that left the window refers to: its slab
// lives on while any other slot of it is in the window, and the record's
// value would keep the whole block its Read decoded (see
// buffer.Read) alive with it.
func (s *slot) forget() {
	s.kr, s.rec, s.err = nil, kgo.Record{}, nil
}

// The window's floor. While Kafka answers, the window is sized to the
// link within MaxBufferedRecords and MaxBufferedBytes (see linkWindow);
// while it does not, and while a
// chunk waits for its retry, by the floor (see sizeWindow): records read
// then would only wait in memory (a 20,000-record window held 33 MB
// through an outage), and they wait as well in the buffer. What the
// window holds already stays.
const (
	floorRecords = 1000
	floorBytes   = 1 << 20
)

// windowFloor is the window's bounds while Kafka does not answer.
func windowFloor(cfg Config) (records, bytes int) {
	return min(floorRecords, cfg.MaxBufferedRecords), min(floorBytes, cfg.MaxBufferedBytes)
}

func newWindow(maxRecords, maxBytes int) *window {
	return &window{maxRecords: maxRecords, maxBytes: maxBytes}
}

// room is how many more records and bytes the window takes. A record
// larger than the byte bound is taken when the window is empty.
func (w *window) room() (records, bytes int) {
	records = w.maxRecords - len(w.slots)
	bytes = w.maxBytes - w.bytes
	if len(w.slots) == 0 {
		bytes = max(bytes, 1)
	}
	return max(records, 0), max(bytes, 0)
}

func (w *window) full() bool {
	r, b := w.room()
	return r == 0 || b == 0
}

func (w *window) add(s *slot) {
	w.slots = append(w.slots, s)
	w.bytes += s.size
}

// finish records a produce's outcome; called from the promise.
func (w *window) finish(s *slot, r *kgo.Record, err error) {
	w.mu.Lock()
	s.done, s.err, s.partition = true, err, r.Partition
	w.mu.Unlock()
}

// outcome reads what the promise recorded.
func (w *window) outcome(s *slot) (done bool, partition int32, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return s.done, s.partition, s.err
}

// evict removes the slots that take returns true for, in order.
func (w *window) evict(take func(*slot) bool) []*slot {
	var out []*slot
	n := 0
	for _, s := range w.slots {
		if take(s) {
			out = append(out, s)
			w.bytes -= s.size
			continue
		}
		w.slots[n] = s
		n++
	}
	clear(w.slots[n:])
	w.slots = w.slots[:n]
	return out
}

// merge adds slots (in sequence order, none already in the window) in
// their places.
func (w *window) merge(in []*slot) {
	if len(in) == 0 {
		return
	}
	out := make([]*slot, 0, len(w.slots)+len(in))
	i := 0
	for _, s := range w.slots {
		for i < len(in) && in[i].seq < s.seq {
			out = append(out, in[i])
			i++
		}
		out = append(out, s)
	}
	out = append(out, in[i:]...)
	for _, s := range in {
		w.bytes += s.size
	}
	w.slots = out
}

// popAcked removes the acknowledged and settled slots from the window
// (after popReleasable they are behind one that waits) and returns their
// sequence numbers.
func (w *window) popAcked() []uint64 {
	var seqs []uint64
	n := 0
	for _, s := range w.slots {
		if s.state == acked || s.state == settled {
			seqs = append(seqs, s.seq)
			w.bytes -= s.size
			s.forget()
			continue
		}
		w.slots[n] = s
		n++
	}
	clear(w.slots[n:])
	w.slots = w.slots[:n]
	return seqs
}

// popReleasable removes the oldest slots below floor for as long as they
// are acked or settled and returns the highest sequence number removed (0:
// none).
func (w *window) popReleasable(floor uint64) uint64 {
	var seq uint64
	i := 0
	for ; i < len(w.slots); i++ {
		s := w.slots[i]
		if s.state != acked && s.state != settled || s.seq >= floor {
			break
		}
		seq = s.seq
		w.bytes -= s.size
		s.forget()
	}
	if i > 0 {
		n := copy(w.slots, w.slots[i:])
		clear(w.slots[n:])
		w.slots = w.slots[:n]
	}
	return seq
}
