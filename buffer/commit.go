package buffer

import (
	"errors"
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
	var ageTick <-chan time.Time
	var ageTicker *time.Ticker
	var tickAge time.Duration // the MaxAge ageTicker was made for
	defer func() {
		if ageTicker != nil {
			ageTicker.Stop()
		}
	}()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	fileTick := time.NewTicker(fileCheckInterval)
	defer fileTick.Stop()
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
		b.watchClock()
		wait, writeTail := b.due(lastCommit)
		if wait == 0 {
			select {
			case <-b.stop:
				wait = -1 // to the stopping path below, at once
			default:
			}
		}
		if wait != 0 {
			var fire <-chan time.Time
			if wait > 0 {
				timer.Reset(wait)
				fire = timer.C
			}
			stopping := false
			select {
			case <-b.wake:
			case <-fire:
			case <-fileTick.C:
				b.checkPath() // it logs what it finds
			case <-ageTick:
				// The limits may drop records now: commit.
				if !b.commit(false, false) {
					b.pauseAfterFailure()
				}
				lastCommit = time.Now()
			case <-b.stop:
				stopping = true
			}
			timer.Stop()
			if !stopping {
				continue // see what is due now
			}
			// Close has made Append refuse new records; write the tail,
			// trying a few times if the disk refuses. First make sure
			// the path still names the file: a file deleted while idle
			// would otherwise vanish with everything in it.
			b.checkPath()
			defer func() {
				b.mu.Lock()
				if b.holdFire {
					b.failHeldLocked(errors.New("buffer closed while its file was deleted and could not be written again"))
				}
				b.mu.Unlock()
				b.settle()
			}()
			for attempt := 1; ; attempt++ {
				ok := b.commit(true, true)
				b.mu.Lock()
				left := b.tl.pending > 0 || len(b.deadOps) > 0
				if left && !ok && attempt == finalAttempts {
					err := fmt.Errorf("buffer closed before the record could be written: %w", b.fail.err)
					b.abandonTailLocked(err)
					ops := b.deadOps
					b.deadOps = nil
					b.mu.Unlock()
					b.finish(ops, err)
					return
				}
				b.mu.Unlock()
				if !left {
					return
				}
				if !ok {
					time.Sleep(100 * time.Millisecond)
				}
			}
		}
		if !b.commit(writeTail, false) {
			b.pauseAfterFailure()
		}
		lastCommit = time.Now()
	}
}

// pauseAfterFailure waits failedCommitPause (or until Close) after a
// failed commit: the disk refuses (full, failing), so try again in a
// while, not in a loop.
func (b *Buffer) pauseAfterFailure() {
	select {
	case <-time.After(failedCommitPause):
	case <-b.stop:
	}
}

// failedCommitPause is how long the committer waits after a failed commit
// before the next.
const failedCommitPause = time.Second

// finalAttempts is how many times Close tries to write the tail when the
// disk refuses.
const finalAttempts = 3

// due says when the next commit is due: 0 now, -1 when nothing waits
// (the committer sleeps until woken), and whether it is to write the
// tail.
func (b *Buffer) due(lastCommit time.Time) (wait time.Duration, writeTail bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	wait = -1
	at := func(t time.Time) {
		if d := max(t.Sub(now), 0); wait < 0 || d < wait {
			wait = d
		}
	}
	room := b.roomLocked()
	if e := b.tl.firstPending(); e != nil {
		deadInTail := b.deadInTail()
		var deadline time.Time
		set := true
		switch {
		case room == 0:
			// Block at max_bytes: the tail waits for deliveries or
			// releases (which are due below).
			set = false
		case b.blocked.Load() || len(b.deadOps) > 0:
			deadline = now
		case b.opts.WriteDelay <= 0:
			deadline = lastCommit.Add(b.opts.SyncInterval)
		case b.opts.MaxTailRecords > 0 && len(b.tl.live()) >= b.opts.MaxTailRecords:
			deadline = now
		default:
			deadline = b.born.Add(e.at + b.delay)
		}
		if b.leaveTailOut(now) && deadline.Before(b.fail.retryAt) {
			deadline = b.fail.retryAt // commits fail: the tail waits for the next attempt
		}
		if set {
			at(deadline)
			writeTail = !deadline.After(now)
		}
		if deadInTail && !b.leaveTailOut(now) {
			at(now) // the commit writes the tail up to that record (and no further unless due)
		}
	}
	if len(b.deadOps) > 0 && !b.leaveTailOut(now) || b.reserveLow(b.next, b.st) {
		at(now)
	}
	if b.fail.err != nil {
		at(b.fail.retryAt) // to try again, or to see that nothing fails any more
	}
	defer func() {
		b.wakeAt = -1
		if wait >= 0 {
			b.wakeAt = now.Add(wait).Sub(b.born)
		}
	}()
	if len(b.toDead) > 0 || len(b.toRemove) > 0 || b.releaseTo >= b.st.head && b.st.count > 0 {
		if room == 0 {
			// With Block at max_bytes, a release is what lets ingest
			// go on: write it at once.
			at(now)
		} else {
			// A release or dead letter alone is not urgent (lost in
			// a crash, records are only delivered twice): gather
			// them for one write.
			at(lastCommit.Add(releaseInterval))
		}
	}
	return wait, writeTail
}

// reserveLow reports whether the sequence numbers reserved on disk run low
// for next: with WriteDelay, a record leaves from memory only with its
// number reserved (see reserveStep).
func (b *Buffer) reserveLow(next uint64, st state) bool {
	return b.opts.WriteDelay > 0 && next+reserveStep/2 > st.reserved
}

// deadInTail reports whether a dead letter waits for a record that is not
// on disk yet. b.mu is held.
func (b *Buffer) deadInTail() bool {
	for seq := range b.toDead {
		if seq >= b.st.next {
			return true
		}
	}
	return false
}

// toWrite is a record of the tail that a commit writes.
type toWrite struct {
	seq uint64
	val []byte
}

// commit writes one transaction: the tail's pending records (if writeTail;
// up to the room Block leaves, unless final or a dead letter waits for one
// of them), dead letters, removals, dead-letter operations, the release,
// the limits, reclaim of retired batches and the sequence reservation.
// Then it runs the callbacks of the records that became durable.
func (b *Buffer) commit(writeTail, final bool) (ok bool) {
	if err := b.Damage(); err != nil {
		// A transaction that met the damage may have left bbolt's locks
		// held: no more transactions. What waits in memory is not
		// acknowledged (the broker delivers it again after the restart).
		b.mu.Lock()
		b.abandonTailLocked(err)
		ops := b.deadOps
		b.deadOps = nil
		b.mu.Unlock()
		b.finish(ops, err)
		return false
	}
	b.watchClock() // a step since the last look is not age
	b.mu.Lock()
	now := time.Now()
	// While commits fail, a commit leaves the tail out until the next
	// attempt with it is due (see failure.go), but Close's commits try.
	noTail := !final && b.leaveTailOut(now)
	b.fail.noTail = noTail
	st := b.st.clone()
	ratio := b.ratio
	headAt := b.headAt
	credit := b.credit
	dl := b.dl
	releaseTo := b.releaseTo
	var dead map[uint64]deadReq
	if len(b.toDead) > 0 {
		dead, b.toDead = b.toDead, map[uint64]deadReq{}
		b.deadNow = dead // Release and Remove still see them (deadWaits)
	}
	// A replay or purge of dead letters numbers records after the tail's
	// and waits for the tail to be written (so do flush barriers): while
	// the disk refuses the tail, they wait.
	var ops []deadOp
	if !noTail {
		ops, b.deadOps = b.deadOps, nil
	}
	remove := b.toRemove
	b.toRemove = nil
	// Operations and flush barriers want the whole tail written; a
	// replay takes the sequence numbers after the tail's, so while
	// operations run, appends are held.
	writeTail = writeTail || len(ops) > 0
	runs := slices.ContainsFunc(ops, func(op deadOp) bool { return op.fn != nil })
	if runs {
		b.hold = make(chan struct{})
	}
	// The tail's pending records: all of them when writeTail (within the
	// room Block leaves, unless final or for a replay), and in any case
	// those up to the last one a dead letter waits for.
	var upTo uint64
	for seq := range dead {
		if seq >= b.st.next && !noTail {
			upTo = max(upTo, seq)
		}
	}
	writeTail = writeTail && !noTail
	var recs []toWrite
	if writeTail || upTo > 0 {
		budget := int64(-1)
		if writeTail && !final && !runs {
			budget = b.roomLocked()
		}
		var size int64
		for _, e := range b.tl.live() {
			if e.state != pending {
				continue
			}
			if !(writeTail && (budget < 0 || size < budget)) && e.seq > upTo {
				break
			}
			recs = append(recs, toWrite{e.seq, e.val})
			size += int64(len(e.val))
		}
		if len(recs) > 0 {
			b.writing = [2]uint64{recs[0].seq, recs[len(recs)-1].seq}
			if writeTail {
				b.adaptDelay()
			}
		}
	}
	next := b.next // with a replay, the sequence numbers it takes start here
	b.mu.Unlock()
	lim := b.lim.Load()
	dlLimit, dlBounded := uint64(lim.MaxDeadLetterBytes), lim.MaxDeadLetterBytes > 0

	budget, bounded := b.recordBudget(ratio)
	limits := bounded && lim.WhenFull == DropOldest && st.bytes > budget || b.expired(st, headAt)
	limits = limits || dlBounded && st.dlBytes > dlLimit
	reserve := b.reserveLow(next, st)
	if len(recs) == 0 && len(dead) == 0 && !runs && len(remove) == 0 && (releaseTo < st.head || st.count == 0) && !limits && !reserve {
		b.mu.Lock()
		// Nothing to write, the tail included: nothing fails.
		recovered := b.succeededLocked(now)
		b.mu.Unlock()
		b.finish(ops, nil)
		if recovered {
			b.makeReserve()
		}
		return true
	}
	var dropped [3]uint64 // max_bytes, max_age, dead_letter_limit
	var requeue map[uint64]deadReq
	err := guard(func() error {
		return b.db.Update(func(tx *bolt.Tx) error {
			batches := tx.Bucket(bucketBatches)
			batches.FillPercent = 0.95 // keys only ever grow: pack pages
			if bounded {
				dl.measure(tx, st, time.Now())
				ratio = diskRatio(tx, st, dl.estimate(st))
				budget, _ = b.recordBudget(ratio)
			}
			// The tail's records go in batches of about maxBatchBytes: big
			// enough to spread bbolt's per-key cost over many records, small
			// enough that a leaf page holds several, so each commit rewrites
			// little besides the new data.
			appended, err := writeBatches(batches, &st, recs)
			if err != nil {
				return err
			}
			before := st.bytes // what dead letters and removals take off was read in the map
			// The batches a release, a limit or reclaim goes through count
			// as they are met, not at the end: a release of a whole window
			// goes through megabytes in one transaction.
			touch := func(n int) { b.touched(tx, n) }
			if runs {
				st.next = max(st.next, next)
			}
			for _, seq := range slices.Sorted(maps.Keys(dead)) { // in key order: packed pages
				if seq >= st.next { // not written yet (Block at max_bytes): later
					if requeue == nil {
						requeue = map[uint64]deadReq{}
					}
					requeue[seq] = dead[seq]
					continue
				}
				if err := deadLetterTx(tx, &st, seq, dead[seq]); err != nil {
					return err
				}
			}
			slices.Sort(remove)
			if err := removeTx(tx, &st, remove); err != nil {
				return err
			}
			for _, op := range ops { // after the appends: their callbacks count on the sequence numbers
				if op.fn == nil {
					continue
				}
				if err := op.fn(tx, &st); err != nil {
					return err
				}
			}
			taken := before - min(before, st.bytes)
			if releaseTo >= st.head && st.count > 0 {
				if _, err := dropPrefix(tx, &st, releaseTo, touch); err != nil {
					return err
				}
			}
			if lim.MaxAge > 0 && st.count > 0 {
				cutoff := b.opts.Now().Add(-lim.MaxAge)
				n, err := dropWhile(tx, &st, func(raw []byte, _ uint64) bool {
					t := st.ageTime(raw) // a clock step is not age; an unsynchronized clock gives none
					return !t.IsZero() && t.Before(cutoff)
				}, touch)
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
				}, touch)
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
			dl.stale = dl.stale || len(dead) > 0 || runs || dropped[2] > 0
			// Make room for what was appended from retired batches (less what
			// earlier deletions left free), and bring the live and retired
			// data within the budget.
			want := appended - min(appended, credit)
			if bounded && st.bytes+st.retired > budget {
				want = max(want, st.bytes+st.retired-budget)
			}
			if noTail {
				// The disk refuses: free the file's pages now, for the
				// records that wait.
				want = max(want, st.retired)
			}
			freed, err := reclaim(tx, &st, want, touch)
			if err != nil {
				return err
			}
			credit = credit + freed - min(credit+freed, appended)
			st.dropBytes += dropped[0]
			st.dropAge += dropped[1]
			if top := max(next, st.next); b.reserveLow(top, st) {
				st.reserved = top + reserveStep
			}
			headAt = headTime(tx, st)
			b.touched(tx, int(appended+taken))
			return st.store(tx.Bucket(bucketMeta))
		})
	})
	if err != nil {
		b.markDamaged(err)
		err = fmt.Errorf("commit to buffer %s: %w", b.path, err)
		if isDiskFull(err) {
			b.dropReserve()
		}
		b.mu.Lock()
		b.failedLocked(err, now)
		for seq, r := range dead { // try again with the next commit
			if _, ok := b.toDead[seq]; !ok {
				b.toDead[seq] = r
			}
		}
		b.deadNow = nil
		b.toRemove = append(b.toRemove, remove...)
		// The records stay pending: written by a later commit or
		// delivered from memory, not acknowledged before.
		b.writing = [2]uint64{}
		b.popLocked()
		b.releaseHoldLocked()
		b.mu.Unlock()
		b.finish(ops, err)
		return false
	}
	// The path must name the file before the records it holds count as
	// durable: a file deleted before or during the commit is written
	// back first (see checkPath).
	if err := b.checkPath(); err != nil {
		b.log.Error("buffer: records just written are in a file no path names; they are not acknowledged until it is back", "err", err)
		b.mu.Lock()
		b.holdFire = true
		b.mu.Unlock()
	}
	b.mu.Lock()
	recovered := b.succeededLocked(now)
	// A backlog has drained when what is left is small enough to copy in
	// a moment: then a compaction may give the file's space back.
	drained := b.st.count > 0 && st.count == 0 || b.st.bytes > drainedBytes && st.bytes <= drainedBytes
	b.st = st
	b.ratio = ratio
	b.headAt = headAt
	b.credit = credit
	b.dl = dl
	b.commits++
	for _, r := range recs {
		if i := b.tl.index(r.seq); i >= 0 {
			b.tl.set(i, written, nil)
		}
	}
	for seq, r := range requeue {
		// Not written (Block at max_bytes): later, if it still waits
		// in the tail; a record that is not there is gone for good.
		if i := b.tl.index(seq); i >= 0 && b.tl.live()[i].state == pending {
			if _, ok := b.toDead[seq]; !ok {
				b.toDead[seq] = r
			}
		}
	}
	b.deadNow = nil
	b.writing = [2]uint64{}
	// Take what became durable off the tail before appends go on: a
	// replay moved the sequence numbers on, and the tail's entries must
	// stay consecutive.
	b.popLocked()
	b.next = max(b.next, st.next)
	b.releaseHoldLocked()
	// Wake readers: records now on disk, or records gone (released,
	// dropped, dead-lettered) that a reader may be waiting behind.
	b.notifyLocked()
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
	b.finish(ops, nil)
	if recovered {
		b.makeReserve()
	}
	if drained {
		b.compactIfSparse()
	}
	return true
}

// adaptDelay doubles the write delay, up to 8 times WriteDelay, when this
// commit writes records of the tail and none was delivered from memory
// since the last one that did: Kafka is not acknowledging, so let an outage
// be buffered in fewer, larger commits. Release and Remove set it back.
// b.mu is held.
func (b *Buffer) adaptDelay() {
	if b.opts.WriteDelay > 0 && !b.delivered {
		b.delay = min(2*b.delay, 8*b.opts.WriteDelay)
	}
	b.delivered = false
}

// finish runs the callbacks of what became durable and answers the
// operations and flush barriers.
func (b *Buffer) finish(ops []deadOp, err error) {
	b.settle()
	for _, op := range ops {
		op.done <- err
	}
}

// releaseHoldLocked lets appends held by a replay go on. b.mu is held.
func (b *Buffer) releaseHoldLocked() {
	if b.hold != nil {
		close(b.hold)
		b.hold = nil
	}
}

// writeBatches puts recs (ascending sequence numbers, with gaps where
// records were delivered from memory) into batches of about maxBatchBytes
// and returns the bytes of batch values written. A short gap is kept in
// its batch as removed entries; a longer one starts a new batch.
func writeBatches(batches *bolt.Bucket, st *state, recs []toWrite) (uint64, error) {
	const maxGap = 16
	var appended uint64
	var group [][]byte
	var base uint64
	size, live := 0, 0
	put := func() error {
		if live == 0 {
			return nil
		}
		val := appendBatch(make([]byte, 0, batchSize(group)), base, group)
		if err := batches.Put(seqKey(base), val); err != nil {
			return err
		}
		appended += uint64(len(val))
		st.next = max(st.next, base+uint64(len(group)))
		st.count += uint64(live)
		st.bytes += uint64(size)
		group, size, live = group[:0], 0, 0
		return nil
	}
	for _, r := range recs {
		if live > 0 {
			gap := r.seq - (base + uint64(len(group)))
			if gap > maxGap || size >= maxBatchBytes {
				if err := put(); err != nil {
					return appended, err
				}
			} else {
				for range gap {
					group = append(group, nil)
				}
			}
		}
		if live == 0 {
			base = r.seq
		}
		group = append(group, r.val)
		size += len(r.val)
		live++
	}
	return appended, put()
}
