package buffer

import (
	"fmt"
	"maps"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// releaseInterval is the least time between two commits that only release
// (or dead-letter) records: a forwarder releases many times a second, and
// every commit costs the disk a few pages however little it changes.
const releaseInterval = 100 * time.Millisecond

// drainedBytes is the most record data left in the buffer for a backlog
// to count as drained (see compactIfSparse).
const drainedBytes = 1 << 20

// commitLoop is the only writer. It owns every write transaction.
func (b *Buffer) commitLoop() {
	defer close(b.done)
	batch := make([]appendReq, 0, b.opts.MaxBatch)
	var ageTick <-chan time.Time
	var ageTicker *time.Ticker
	var tickAge time.Duration // the MaxAge ageTicker was made for
	defer func() {
		if ageTicker != nil {
			ageTicker.Stop()
		}
	}()
	lastCommit := time.Time{}
	for {
		if maxAge := b.lim.Load().MaxAge; maxAge != tickAge { // at start, and after SetLimits
			if ageTicker != nil {
				ageTicker.Stop()
				ageTicker, ageTick = nil, nil
			}
			if maxAge > 0 {
				ageTicker = time.NewTicker(min(maxAge/10, time.Second) + time.Millisecond)
				ageTick = ageTicker.C
			}
			tickAge = maxAge
		}
		batch = batch[:0]
		reqs := b.reqs
		if b.full() {
			reqs = nil // Block: leave appends queued until a release makes room
		}
		stopping, woken := false, false
		select {
		case r := <-reqs:
			batch = append(batch, r)
		case <-b.wake:
			woken = true
		case <-ageTick:
		case <-b.stop:
			stopping = true
		}
		if d := releaseInterval - time.Since(lastCommit); woken && reqs != nil && d > 0 {
			// A release or dead letter alone is not urgent (lost in a
			// crash, records are only delivered twice): gather them for
			// one write, unless an append comes to carry them. (With
			// Block at max_bytes, reqs is nil: the release is what lets
			// ingest go on, and is written at once.)
			t := time.NewTimer(d)
			select {
			case r := <-reqs:
				batch = append(batch, r)
			case <-t.C:
			case <-b.stop:
				stopping = true
			}
			t.Stop()
		}
		if d := b.opts.SyncInterval - time.Since(lastCommit); d > 0 && !stopping && len(batch) > 0 {
			select { // gather more for one write, at most once per interval
			case <-time.After(d):
			case <-b.stop:
				stopping = true
			}
		}
		if reqs != nil {
			batch = drain(b.reqs, batch, b.opts.MaxBatch, b.room())
		}
		b.commit(batch)
		lastCommit = time.Now()
		if stopping {
			// Close has made Append refuse new records; commit those that
			// were queued before it.
			for len(b.reqs) > 0 {
				b.commit(drain(b.reqs, batch[:0], b.opts.MaxBatch, -1))
			}
			return
		}
	}
}

// drain takes queued appends into batch, up to max of them and, if budget
// is not negative, until their bytes reach budget.
func drain(reqs chan appendReq, batch []appendReq, max int, budget int64) []appendReq {
	var size int64
	for _, r := range batch {
		size += int64(len(r.val))
	}
	for len(batch) < max && (budget < 0 || size < budget) {
		select {
		case r := <-reqs:
			batch = append(batch, r)
			size += int64(len(r.val))
		default:
			return batch
		}
	}
	return batch
}

// commit writes one transaction: dead letters, the appended batch, the
// release, the limits, then reclaim of retired batches.
func (b *Buffer) commit(batch []appendReq) {
	b.mu.Lock()
	st := b.st.clone()
	ratio := b.ratio
	credit := b.credit
	dl := b.dl
	releaseTo := b.releaseTo
	var dead map[uint64]deadReq
	if len(b.toDead) > 0 {
		dead, b.toDead = b.toDead, map[uint64]deadReq{}
	}
	ops := b.deadOps
	b.deadOps = nil
	remove := b.toRemove
	b.toRemove = nil
	b.mu.Unlock()
	queued := 0
	for _, r := range batch {
		queued += len(r.val)
	}
	b.unreserve(queued) // in the committer's hands now
	lim := b.lim.Load()
	dlLimit, dlBounded := uint64(lim.MaxDeadLetterBytes), lim.MaxDeadLetterBytes > 0

	budget, bounded := b.recordBudget(ratio)
	limits := bounded && lim.WhenFull == DropOldest && st.bytes > budget || b.expired(st)
	limits = limits || dlBounded && st.dlBytes > dlLimit
	if len(batch) == 0 && len(dead) == 0 && len(ops) == 0 && len(remove) == 0 && releaseTo < st.head && !limits {
		return
	}
	var dropped [3]uint64 // max_bytes, max_age, dead_letter_limit
	err := b.db.Update(func(tx *bolt.Tx) error {
		batches := tx.Bucket(bucketBatches)
		batches.FillPercent = 0.95 // keys only ever grow: pack pages
		if bounded {
			dl.measure(tx, st, time.Now())
			ratio = diskRatio(tx, st, dl.estimate(st))
			budget, _ = b.recordBudget(ratio)
		}
		for _, seq := range slices.Sorted(maps.Keys(dead)) { // in key order: packed pages
			if err := deadLetterTx(tx, &st, seq, dead[seq]); err != nil {
				return err
			}
		}
		slices.Sort(remove)
		if err := removeTx(tx, &st, remove); err != nil {
			return err
		}
		// The appended records go in batches of about maxBatchBytes: big
		// enough to spread bbolt's per-key cost over many records, small
		// enough that a leaf page holds several, so each commit rewrites
		// little besides the new data.
		recs := make([][]byte, 0, len(batch))
		size := 0
		var appended uint64 // batch value bytes written
		for i, r := range batch {
			if r.val != nil {
				recs = append(recs, r.val)
				size += len(r.val)
			}
			if len(recs) == 0 || size < maxBatchBytes && i < len(batch)-1 {
				continue
			}
			val := appendBatch(make([]byte, 0, batchSize(recs)), recs)
			if err := batches.Put(seqKey(st.next), val); err != nil {
				return err
			}
			appended += uint64(len(val))
			st.next += uint64(len(recs))
			st.count += uint64(len(recs))
			st.bytes += uint64(size)
			recs, size = recs[:0], 0
		}
		for _, op := range ops { // after the appends: their callbacks count on the sequence numbers
			if err := op.fn(tx, &st); err != nil {
				return err
			}
		}
		if releaseTo >= st.head {
			if _, err := dropPrefix(tx, &st, releaseTo); err != nil {
				return err
			}
		}
		if lim.MaxAge > 0 && st.count > 0 {
			cutoff := b.opts.Now().Add(-lim.MaxAge)
			n, err := dropWhile(tx, &st, func(raw []byte, _ uint64) bool { return recordTime(raw).Before(cutoff) })
			if err != nil {
				return err
			}
			dropped[1] = n
		}
		if bounded && st.bytes > budget && lim.WhenFull == DropOldest {
			excess := st.bytes - budget
			var freed uint64
			n, err := dropWhile(tx, &st, func(raw []byte, _ uint64) bool {
				if freed >= excess {
					return false
				}
				freed += uint64(len(raw))
				return true
			})
			if err != nil {
				return err
			}
			dropped[0] = n
		}
		if dlBounded {
			n, err := limitDeadLetters(tx, &st, dlLimit)
			if err != nil {
				return err
			}
			dropped[2] = n
		}
		dl.stale = dl.stale || len(dead) > 0 || len(ops) > 0 || dropped[2] > 0
		// Make room for what was appended from retired batches (less what
		// earlier deletions left free), and bring the live and retired
		// data within the budget.
		want := appended - min(appended, credit)
		if bounded && st.bytes+st.retired > budget {
			want = max(want, st.bytes+st.retired-budget)
		}
		freed, err := reclaim(tx, &st, want)
		if err != nil {
			return err
		}
		credit = credit + freed - min(credit+freed, appended)
		st.dropBytes += dropped[0]
		st.dropAge += dropped[1]
		return st.store(tx.Bucket(bucketMeta))
	})
	if err != nil {
		err = fmt.Errorf("commit to buffer %s: %w", b.path, err)
		b.log.Error("buffer: commit failed", "err", err, "records", len(batch))
		b.mu.Lock()
		for seq, r := range dead { // try again with the next commit
			if _, ok := b.toDead[seq]; !ok {
				b.toDead[seq] = r
			}
		}
		b.toRemove = append(b.toRemove, remove...)
		b.mu.Unlock()
		for _, r := range batch {
			r.done(0, err)
		}
		for _, op := range ops {
			op.done <- err
		}
		return
	}
	b.mu.Lock()
	// A backlog has drained when what is left is small enough to copy in
	// a moment: then a compaction may give the file's space back.
	seq0 := b.st.next
	drained := b.st.count > 0 && st.count == 0 || b.st.bytes > drainedBytes && st.bytes <= drainedBytes
	b.st = st
	b.ratio = ratio
	b.credit = credit
	b.dl = dl
	b.commits++
	// Wake readers: new records, or records gone (released, dropped,
	// dead-lettered) that a reader may be waiting behind.
	close(b.changed)
	b.changed = make(chan struct{})
	logDrop := dropped != [3]uint64{} && time.Since(b.lastDrop) > 10*time.Second
	if logDrop {
		b.lastDrop = time.Now()
	}
	b.mu.Unlock()
	if logDrop {
		b.log.Warn("buffer: limit reached; oldest records dropped",
			"dropped_max_bytes", dropped[0], "dropped_max_age", dropped[1], "dropped_dead_letter_limit", dropped[2],
			"total_max_bytes", st.dropBytes, "total_max_age", st.dropAge, "total_dead_letter_limit", st.dropDLLimit,
			"max_bytes", lim.MaxBytes, "max_age", lim.MaxAge, "max_dead_letter_bytes", lim.MaxDeadLetterBytes)
	}
	for _, op := range ops {
		op.done <- nil
	}
	seq := seq0
	for _, r := range batch {
		if r.val == nil { // a flush barrier
			r.done(0, nil)
			continue
		}
		r.done(seq, nil)
		seq++
	}
	if drained {
		b.compactIfSparse()
	}
}
