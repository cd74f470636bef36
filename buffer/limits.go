package buffer

import (
	"encoding/binary"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ratioMinBytes is the least record data from which the file's overhead is
// measured: below it bbolt's fixed pages (meta, freelist, bucket roots)
// would dominate the ratio, and MaxBytes counts record bytes as they are.
const ratioMinBytes = 1 << 20

// diskRatio measures, at the start of a write transaction, how many bytes
// of the file are in use per byte of record data in st: pages that are
// neither free nor pending, over the records' encoded size and the retired
// batches' size (their pages are in use until reclaimed). It reflects
// what the commits before left on disk: batch framing, leaf pages' unused
// tails, branch pages. The dead-letter bucket's pages (dlDisk, see
// dlPages) are left out: MaxBytes does not count them.
func diskRatio(tx *bolt.Tx, st state, dlDisk uint64) float64 {
	if data := st.bytes + st.retired; data >= ratioMinBytes {
		used := uint64(max(usedBytes(tx), 0))
		return max(float64(used-min(used, dlDisk))/float64(data), 1)
	}
	return 1
}

// usedBytes is the part of the file in pages that hold data: bbolt's high
// water mark less its free and pending pages, as the last write
// transaction left them.
func usedBytes(tx *bolt.Tx) int64 {
	s := tx.DB().Stats()
	return tx.Size() - int64(s.FreePageN+s.PendingPageN)*int64(tx.DB().Info().PageSize)
}

// recordBudget is how many bytes of record data fit in MaxBytes on disk at
// the given ratio; ok is false when there is no bound.
func (b *Buffer) recordBudget(ratio float64) (budget uint64, ok bool) {
	maxBytes := b.lim.Load().MaxBytes
	if maxBytes <= 0 {
		return 0, false
	}
	return uint64(float64(maxBytes) / ratio), true
}

// room is how many bytes of the tail one commit may write: with Block,
// what is left below MaxBytes; otherwise unbounded (-1).
func (b *Buffer) room() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.roomLocked()
}

// roomLocked is room with b.mu held.
func (b *Buffer) roomLocked() int64 {
	if b.lim.Load().WhenFull != Block {
		return -1
	}
	budget, ok := b.recordBudget(b.ratio)
	if !ok {
		return -1
	}
	return int64(budget - min(budget, b.st.bytes))
}

// full reports whether appends must wait (Block policy at MaxBytes).
func (b *Buffer) full() bool {
	return b.room() == 0
}

// expired reports whether the head record, received at headAt, is older
// than MaxAge.
func (b *Buffer) expired(st state, headAt time.Time) bool {
	maxAge := b.lim.Load().MaxAge
	return maxAge > 0 && st.count > 0 && !headAt.IsZero() && headAt.Before(b.opts.Now().Add(-maxAge))
}

// headTime is the receive time of the head record, younger by the clock
// steps after it (see clock.go): kept in memory after
// every commit, so that MaxAge costs no read transaction. The zero time
// if there is none or it cannot be read.
func headTime(tx *bolt.Tx, st state) time.Time {
	if st.count == 0 {
		return time.Time{}
	}
	c := tx.Bucket(bucketBatches).Cursor()
	for k, v := seekBatch(c, st.head); k != nil; k, v = c.Next() {
		base := binary.BigEndian.Uint64(k)
		recs, _, _ := parseBatch(base, v)
		for i, raw := range recs {
			if seq := base + uint64(i); seq >= st.head && len(raw) > 0 {
				return st.ageTime(raw) // as MaxAge sees it
			}
		}
	}
	return time.Time{}
}

// applyLimits drops the records past max_age and, with drop_oldest, past
// max_bytes, oldest first, and the oldest dead letters past
// max_dead_letter_bytes, in the commit's transaction; w.dropped counts
// them. touch is as for dropWhile.
func (b *Buffer) applyLimits(tx *bolt.Tx, w *commitWork, touch func(n int)) error {
	st, lim := &w.st, w.lim
	if lim.MaxAge > 0 && st.count > 0 {
		cutoff := b.opts.Now().Add(-lim.MaxAge)
		n, err := dropWhile(tx, st, func(raw []byte, _ uint64) bool {
			t := st.ageTime(raw) // a clock step is not age; an unsynchronized clock gives none
			return !t.IsZero() && t.Before(cutoff)
		}, touch)
		if err != nil {
			return err
		}
		w.dropped[1] = n
	}
	if w.bounded && st.bytes > w.budget && lim.WhenFull == DropOldest {
		excess := st.bytes - w.budget
		var freed uint64
		n, err := dropWhile(tx, st, func(raw []byte, _ uint64) bool {
			if freed >= excess {
				return false
			}
			freed += uint64(len(raw))
			return true
		}, touch)
		if err != nil {
			return err
		}
		w.dropped[0] = n
	}
	if w.dlBounded {
		n, err := limitDeadLetters(tx, st, w.dlLimit)
		if err != nil {
			return err
		}
		w.dropped[2] = n
	}
	return nil
}

// dropWhile removes live records from the head for as long as drop says so,
// moving the head past them. The batches it empties are retired, not
// deleted: reclaim deletes them as new data needs their space. A batch
// whose framing is broken is dead-lettered whole on the way, never
// dropped uncounted. touch, if not nil, is told the size of each batch it
// went through. It returns how many records it removed.
func dropWhile(tx *bolt.Tx, st *state, drop func(raw []byte, seq uint64) bool, touch func(n int)) (uint64, error) {
	batches := tx.Bucket(bucketBatches)
	var removed uint64
	var dead [][]byte // broken batches, dead-lettered
	c := batches.Cursor()
	stopped := false
	for k, v := seekBatch(c, st.head); k != nil && !stopped; k, v = c.Next() {
		base := binary.BigEndian.Uint64(k)
		recs, count, perr := parseBatch(base, v)
		if touch != nil {
			touch(len(v))
		}
		if misplaced(perr) {
			return removed, perr // damage in the file, not a batch to set aside
		}
		if framingBroken(recs, count, perr) {
			if err := deadLetterBatch(tx, st, k, v, recs, perr, time.Now()); err != nil {
				return removed, err
			}
			st.head = batchEnd(batches, base, st.next)
			dead = append(dead, k)
			continue
		}
		for i, raw := range recs {
			seq := base + uint64(i)
			if seq < st.head || len(raw) == 0 {
				continue
			}
			if !drop(raw, seq) {
				st.head = seq // past the removed entries before it, if any
				stopped = true
				break
			}
			removed++
			st.count--
			st.bytes -= uint64(len(raw))
			st.head = seq + 1
		}
		if !stopped {
			st.head = base + uint64(count)
			st.retired += uint64(len(v))
		}
	}
	for _, k := range dead {
		if err := batches.Delete(k); err != nil {
			return removed, err
		}
	}
	if !stopped {
		// Past the last batch: no record is left on disk, whatever the
		// count says. Damage can leave it high (a record's length
		// flipped to 0 reads as removed but was counted), and a count
		// that never comes back to 0 would show records held for ever.
		st.count, st.bytes = 0, 0
	}
	if st.count == 0 {
		st.head = st.next
	}
	return removed, nil
}

// recordFlags reads an encoded record's flags; 0 if it cannot.
func recordFlags(raw []byte) byte {
	if len(raw) < 2 {
		return 0
	}
	return raw[1]
}

// recordTime reads an encoded record's receive time without decoding it
// all; the zero time if it cannot.
func recordTime(raw []byte) time.Time {
	if len(raw) < 4 {
		return time.Time{}
	}
	ns, n := binary.Varint(raw[3:])
	if n <= 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Limits are the bounds a running buffer applies; see the Options fields
// of the same names for what each means and its default.
type Limits struct {
	MaxBytes           int64
	WhenFull           WhenFull
	MaxAge             time.Duration
	MaxDeadLetterBytes int64
}

func (o *Options) limits() Limits {
	return Limits{MaxBytes: o.MaxBytes, WhenFull: o.WhenFull, MaxAge: o.MaxAge, MaxDeadLetterBytes: o.MaxDeadLetterBytes}
}

// SetLimits changes the limits of a running buffer (a configuration
// reload). The next commit applies them: records over a lowered MaxBytes
// or MaxAge are dropped then, oldest first, and counted as always; appends
// held by Block go on as the room grows.
func (b *Buffer) SetLimits(l Limits) {
	if l.MaxDeadLetterBytes == 0 {
		l.MaxDeadLetterBytes = defaultMaxDeadLetterBytes
	}
	b.lim.Store(&l)
	b.signal()
}
