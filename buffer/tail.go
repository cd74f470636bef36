package buffer

import "time"

// The tail holds every appended record until it is durable, in sequence
// order. A record is durable once a commit wrote and fsynced it, or, with
// Options.WriteDelay, once it was delivered (Release or Remove) before
// that: Kafka acknowledged it with acks=all, so its copy on the in-sync
// replicas is safe and the disk need not hold it. Its callback runs when it
// and every record before it are durable, so callbacks run in append
// order. Read serves the records of the tail that are not on disk, so the
// forwarder sends a record at once, whatever the write delay.
//
// The tail is bounded by Options.QueueSize and QueueBytes (Append waits),
// and in time: a record waits at most the write delay (at most 8 times
// Options.WriteDelay) before a commit writes it, unless Block at MaxBytes
// leaves no room.

// entryState is where a record of the tail stands.
type entryState uint8

const (
	pending   entryState = iota // not durable yet
	written                     // a commit wrote it
	delivered                   // released or removed before a commit wrote it
	failed                      // the commit that was to write it failed
)

// entry is one record of the tail.
type entry struct {
	seq   uint64
	val   []byte // the encoded record
	done  func(seq uint64, err error)
	at    time.Duration // when it was appended, on the buffer's monotonic clock
	state entryState
	err   error // with failed
}

// tail is the buffer's tail; it is guarded by Buffer.mu.
type tail struct {
	// ents[off:] are the entries, ents[off+i].seq == ents[off].seq+i.
	// Popped entries leave room at the front, taken back when the slice
	// is full or empty, so a steady stream allocates nothing.
	ents []entry
	off  int
	// pending and pendingBytes count the entries in state pending and
	// their encoded bytes: records held in memory only.
	pending      int
	pendingBytes uint64
}

// live returns the entries.
func (t *tail) live() []entry { return t.ents[t.off:] }

// push adds e, whose seq follows the last entry's.
func (t *tail) push(e entry) {
	if t.off > 0 && len(t.ents) == cap(t.ents) {
		n := copy(t.ents, t.ents[t.off:])
		clear(t.ents[n:])
		t.ents, t.off = t.ents[:n], 0
	}
	t.ents = append(t.ents, e)
	t.pending++
	t.pendingBytes += uint64(len(e.val))
}

// index returns the position of seq in live(), or -1.
func (t *tail) index(seq uint64) int {
	l := t.live()
	if len(l) == 0 || seq < l[0].seq || seq-l[0].seq >= uint64(len(l)) {
		return -1
	}
	return int(seq - l[0].seq)
}

// set moves the pending entry at live index i to state s.
func (t *tail) set(i int, s entryState, err error) {
	e := &t.ents[t.off+i]
	if e.state != pending {
		return
	}
	e.state, e.err = s, err
	t.pending--
	t.pendingBytes -= uint64(len(e.val))
}

// firstPending returns the first pending entry, or nil.
func (t *tail) firstPending() *entry {
	l := t.live()
	for i := range l {
		if l[i].state == pending {
			return &l[i]
		}
	}
	return nil
}

// popDurable removes the entries before the first pending one, appending
// them to out, and returns out and their encoded bytes.
func (t *tail) popDurable(out []entry) ([]entry, int) {
	l := t.live()
	n, size := 0, 0
	for n < len(l) && l[n].state != pending {
		size += len(l[n].val)
		n++
	}
	out = append(out, l[:n]...)
	clear(l[:n]) // let the payloads and callbacks go
	t.off += n
	if t.off == len(t.ents) {
		t.ents, t.off = t.ents[:0], 0
	}
	return out, size
}

// read appends to take the pending entries after seq after and below
// limitSeq (the reserved sequence numbers: a record beyond them must not
// leave before the reservation is on disk), at most maxRecords of them and,
// past the first, within maxBytes (0 or less: no bound).
func (t *tail) read(after uint64, maxRecords, maxBytes int, limitSeq uint64, take []storedRecord) []storedRecord {
	l := t.live()
	i := 0
	if len(l) > 0 && after >= l[0].seq {
		i = int(min(after-l[0].seq+1, uint64(len(l))))
	}
	size := 0
	for ; i < len(l) && len(take) < maxRecords && l[i].seq < limitSeq; i++ {
		e := &l[i]
		if e.state != pending {
			continue
		}
		if maxBytes > 0 && len(take) > 0 && size+len(e.val) > maxBytes {
			break
		}
		take = append(take, storedRecord{e.seq, e.val})
		size += len(e.val)
	}
	return take
}
