package buffer

import (
	"encoding/binary"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Release removes every record with a sequence number up to and including
// seq: they were delivered. It returns at once. With WriteDelay, records of
// the tail it covers are durable now and are never written: their
// callbacks run, in append order, as soon as the records before them are
// durable too (on this goroutine, or on one already running callbacks); the removal of records on disk is
// written with a later commit (gathered, see releaseInterval). If that is
// lost in a crash, the records are read again (delivered twice, never
// lost).
func (b *Buffer) Release(seq uint64) {
	b.mu.Lock()
	b.releaseTo = max(b.releaseTo, seq)
	settled := false
	if b.opts.WriteDelay > 0 {
		l := b.tl.live()
		var newest time.Duration
		for i := 0; i < len(l) && l[i].seq <= seq; i++ {
			if l[i].state == pending && !b.deadWaits(l[i].seq) {
				b.tl.set(i, delivered, nil)
				settled, newest = true, l[i].at
			}
		}
		if settled {
			b.deliveredAfter(newest)
			b.popLocked()
		}
	}
	disk := b.st.count > 0 && seq >= b.st.head || b.writing[0] != 0 && seq >= b.writing[0]
	b.mu.Unlock()
	if settled {
		b.settle()
	}
	if disk {
		b.signal()
	}
}

// Remove removes the records with these sequence numbers, wherever they
// are: delivered while an earlier record still waits, so Release cannot
// take them yet. It returns at once; as with Release, records of the tail
// are durable at once with WriteDelay, and the removal of records on disk
// is written with a later commit. If that is lost in a crash, the records
// are read again (delivered twice, never lost). A sequence number already
// gone is ignored.
func (b *Buffer) Remove(seqs ...uint64) {
	if len(seqs) == 0 {
		return
	}
	b.mu.Lock()
	settled, disk := false, false
	for _, seq := range seqs {
		if b.opts.WriteDelay > 0 && seq >= b.st.next {
			if i := b.tl.index(seq); i >= 0 && !b.deadWaits(seq) && b.tl.live()[i].state == pending {
				b.tl.set(i, delivered, nil)
				settled = true
				b.deliveredAfter(b.tl.live()[i].at)
			}
			if b.writing[0] == 0 || seq < b.writing[0] || seq > b.writing[1] {
				continue // not on disk, and not being written
			}
		}
		b.toRemove = append(b.toRemove, seq)
		disk = true
	}
	if settled {
		b.popLocked()
	}
	b.mu.Unlock()
	if settled {
		b.settle()
	}
	if disk {
		b.signal()
	}
}

// deliveredAfter adapts the write delay to a record of the tail delivered
// from memory, appended at at: the delay becomes twice the time Kafka took
// to acknowledge it, within WriteDelay and 8 times that. Over a link whose
// acknowledgements take longer than WriteDelay, records are still
// delivered before their deadline, not written; with a fast link it comes
// back to WriteDelay. b.mu is held.
func (b *Buffer) deliveredAfter(at time.Duration) {
	b.delivered = true
	b.delay = min(max(2*(time.Since(b.born)-at), b.opts.WriteDelay), 8*b.opts.WriteDelay)
}

// deadWaits reports whether a dead letter waits for record seq. b.mu is
// held.
func (b *Buffer) deadWaits(seq uint64) bool {
	if len(b.toDead) > 0 {
		if _, ok := b.toDead[seq]; ok {
			return true
		}
	}
	if len(b.deadNow) > 0 { // taken by the commit under way, which may not write the record
		if _, ok := b.deadNow[seq]; ok {
			return true
		}
	}
	return false
}

// removeTx removes the records seqs (ascending) from their batches,
// rewriting each batch once and leaving removed entries, as dead letters
// do. A batch whose framing is broken is left for Read and the limits to
// find.
func removeTx(tx *bolt.Tx, st *state, seqs []uint64) error {
	batches := tx.Bucket(bucketBatches)
	for len(seqs) > 0 {
		if seqs[0] < st.head {
			seqs = seqs[1:]
			continue
		}
		k, v := seekBatch(batches.Cursor(), seqs[0])
		if k == nil {
			return nil
		}
		base := binary.BigEndian.Uint64(k)
		recs, count, perr := parseBatch(base, v)
		if misplaced(perr) {
			return perr // damage in the file, not a batch to skip
		}
		end := base + uint64(count)
		skip := uint64(0) // skip the sequence numbers below this
		switch {
		case seqs[0] < base: // in a gap: not there
			skip = base
		case framingBroken(recs, count, perr): // its header may be unreadable: it reaches up to the next batch
			skip = max(batchEnd(batches, base, st.next), end, base+1)
		}
		if skip > 0 {
			for len(seqs) > 0 && seqs[0] < skip {
				seqs = seqs[1:]
			}
			continue
		}
		kept := make([][]byte, len(recs))
		copy(kept, recs)
		changed := false
		for ; len(seqs) > 0 && seqs[0] < end; seqs = seqs[1:] {
			i := seqs[0] - base
			if len(kept[i]) == 0 {
				continue // removed before
			}
			st.count--
			st.bytes -= uint64(len(kept[i]))
			kept[i] = nil
			changed = true
		}
		if changed {
			if err := batches.Put(append([]byte(nil), k...), appendBatch(make([]byte, 0, batchSize(kept)), base, kept)); err != nil {
				return err
			}
		}
	}
	return nil
}

// dropPrefix removes every record up to and including through, retiring
// the batches that end there and moving the head. touch is as for
// dropWhile. It returns how many live records it removed.
func dropPrefix(tx *bolt.Tx, st *state, through uint64, touch func(n int)) (uint64, error) {
	return dropWhile(tx, st, func(_ []byte, seq uint64) bool { return seq <= through }, touch)
}

// reclaim deletes retired batches, oldest first, until want bytes of them
// are gone or none is left, and returns how many bytes it deleted. touch,
// if not nil, is told the size of each batch it went through.
//
// Why not delete batches as soon as they are released: bbolt writes its
// whole freelist in every commit, so the pages of a delivered backlog,
// freed at once, would be written again with every commit until new data
// reused them (measured: 10 KB written per record while a backlog of
// 300,000 drained at 30,000/s beside one live sensor). Deleted only as
// fast as new data takes their place, they leave the freelist small, and
// the file does not grow while retired batches remain. A drained backlog
// is given back to the file system by compaction, which leaves retired
// batches behind.
func reclaim(tx *bolt.Tx, st *state, want uint64, touch func(n int)) (uint64, error) {
	if want == 0 || st.retired == 0 {
		return 0, nil
	}
	batches := tx.Bucket(bucketBatches)
	c := batches.Cursor()
	var gone [][]byte
	var freed uint64
	k, v := c.First()
	for k != nil && freed < want {
		end := st.next
		nk, nv := c.Next()
		if nk != nil {
			end = binary.BigEndian.Uint64(nk)
		}
		if n, ok := batchCount(v); ok { // the next batch may start after a gap
			end = min(end, binary.BigEndian.Uint64(k)+uint64(n))
		}
		if touch != nil {
			touch(len(v))
		}
		if end > st.head { // this batch holds the head: no retired batch is left
			k = nil
			break
		}
		gone = append(gone, k)
		freed += uint64(len(v))
		k, v = nk, nv
	}
	for _, k := range gone {
		if err := batches.Delete(k); err != nil {
			return 0, err
		}
	}
	st.retired -= min(st.retired, freed)
	if k == nil {
		st.retired = 0 // none left before the head
	}
	return freed, nil
}

// batchEnd is the sequence number after the batch at base: the next
// batch's first, or next if it is the last. It does not trust the batch's
// own header, which may be damaged.
func batchEnd(batches *bolt.Bucket, base, next uint64) uint64 {
	if k, _ := batches.Cursor().Seek(seqKey(base + 1)); k != nil {
		return binary.BigEndian.Uint64(k)
	}
	return next
}
