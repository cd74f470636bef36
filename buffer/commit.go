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
	w := b.takeWork(writeTail, final)
	if w.idle(b) {
		b.mu.Lock()
		// Nothing to write, the tail included: nothing fails.
		recovered := b.succeededLocked(w.now)
		b.mu.Unlock()
		b.finish(w.ops, nil)
		if recovered {
			b.makeReserve()
		}
		return true
	}
	err := guard(func() error {
		return b.db.Update(func(tx *bolt.Tx) error { return b.writeWork(tx, w) })
	})
	if err != nil {
		b.commitFailed(w, err)
		return false
	}
	b.committed(w)
	return true
}

// commitWork is one commit: what it takes from the buffer under b.mu, the
// state its transaction works on, and what it hands back.
type commitWork struct {
	now          time.Time
	noTail, runs bool
	recs         []toWrite          // the tail's records to write
	dead         map[uint64]deadReq // dead letters to apply
	requeue      map[uint64]deadReq // of those, the ones for records not written yet
	remove       []uint64           // records to remove
	ops          []deadOp           // replays and purges of dead letters, flush barriers
	next         uint64             // with a replay, the sequence numbers it takes start here
	releaseTo    uint64
	lim          *Limits
	budget       uint64 // bytes of records max_bytes leaves room for (if bounded)
	bounded      bool
	dlLimit      uint64 // max_dead_letter_bytes (if dlBounded)
	dlBounded    bool
	dropped      [3]uint64 // max_bytes, max_age, dead_letter_limit
	st           state
	ratio        float64
	headAt       time.Time
	credit       uint64
	dl           dlPages
}

// takeWork takes what waits for a commit, and the limits in force.
func (b *Buffer) takeWork(writeTail, final bool) *commitWork {
	b.mu.Lock()
	w := b.takeLocked(writeTail, final)
	b.mu.Unlock()
	w.lim = b.lim.Load()
	w.dlLimit, w.dlBounded = uint64(w.lim.MaxDeadLetterBytes), w.lim.MaxDeadLetterBytes > 0
	w.budget, w.bounded = b.recordBudget(w.ratio)
	return w
}

// takeLocked is takeWork's part under b.mu.
func (b *Buffer) takeLocked(writeTail, final bool) *commitWork {
	w := &commitWork{now: time.Now()}
	// While commits fail, a commit leaves the tail out until the next
	// attempt with it is due (see failure.go), but Close's commits try.
	w.noTail = !final && b.leaveTailOut(w.now)
	b.fail.noTail = w.noTail
	w.st = b.st.clone()
	w.ratio = b.ratio
	w.headAt = b.headAt
	w.credit = b.credit
	w.dl = b.dl
	w.releaseTo = b.releaseTo
	if len(b.toDead) > 0 {
		w.dead, b.toDead = b.toDead, map[uint64]deadReq{}
		b.deadNow = w.dead // Release and Remove still see them (deadWaits)
	}
	// A replay or purge of dead letters numbers records after the tail's
	// and waits for the tail to be written (so do flush barriers): while
	// the disk refuses the tail, they wait.
	if !w.noTail {
		w.ops, b.deadOps = b.deadOps, nil
	}
	w.remove = b.toRemove
	b.toRemove = nil
	// Operations and flush barriers want the whole tail written; a
	// replay takes the sequence numbers after the tail's, so while
	// operations run, appends are held.
	writeTail = writeTail || len(w.ops) > 0
	w.runs = slices.ContainsFunc(w.ops, func(op deadOp) bool { return op.fn != nil })
	if w.runs {
		b.hold = make(chan struct{})
	}
	// The tail's pending records: all of them when writeTail (within the
	// room Block leaves, unless final or for a replay), and in any case
	// those up to the last one a dead letter waits for.
	var upTo uint64
	for seq := range w.dead {
		if seq >= b.st.next && !w.noTail {
			upTo = max(upTo, seq)
		}
	}
	writeTail = writeTail && !w.noTail
	if writeTail || upTo > 0 {
		budget := int64(-1)
		if writeTail && !final && !w.runs {
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
			w.recs = append(w.recs, toWrite{e.seq, e.val})
			size += int64(len(e.val))
		}
		if len(w.recs) > 0 {
			b.writing = [2]uint64{w.recs[0].seq, w.recs[len(w.recs)-1].seq}
			if writeTail {
				b.adaptDelay()
			}
		}
	}
	w.next = b.next
	return w
}

// idle reports whether the commit has nothing to write, the limits and the
// reservation included.
func (w *commitWork) idle(b *Buffer) bool {
	st := w.st
	limits := w.bounded && w.lim.WhenFull == DropOldest && st.bytes > w.budget || b.expired(st, w.headAt)
	limits = limits || w.dlBounded && st.dlBytes > w.dlLimit
	reserve := b.reserveLow(w.next, st)
	return len(w.recs) == 0 && len(w.dead) == 0 && !w.runs && len(w.remove) == 0 &&
		(w.releaseTo < st.head || st.count == 0) && !limits && !reserve
}

// writeWork is the commit's transaction.
func (b *Buffer) writeWork(tx *bolt.Tx, w *commitWork) error {
	st := &w.st
	batches := tx.Bucket(bucketBatches)
	batches.FillPercent = 0.95 // keys only ever grow: pack pages
	if w.bounded {
		w.dl.measure(tx, *st, time.Now())
		w.ratio = diskRatio(tx, *st, w.dl.estimate(*st))
		w.budget, _ = b.recordBudget(w.ratio)
	}
	// The tail's records go in batches of about maxBatchBytes: big
	// enough to spread bbolt's per-key cost over many records, small
	// enough that a leaf page holds several, so each commit rewrites
	// little besides the new data.
	appended, err := writeBatches(batches, st, w.recs)
	if err != nil {
		return err
	}
	before := st.bytes // what dead letters and removals take off was read in the map
	// The batches a release, a limit or reclaim goes through count as
	// they are met, not at the end: a release of a whole window goes
	// through megabytes in one transaction.
	touch := func(n int) { b.touched(tx, n) }
	if w.runs {
		st.next = max(st.next, w.next)
	}
	for _, seq := range slices.Sorted(maps.Keys(w.dead)) { // in key order: packed pages
		if seq >= st.next { // not written yet (Block at max_bytes): later
			if w.requeue == nil {
				w.requeue = map[uint64]deadReq{}
			}
			w.requeue[seq] = w.dead[seq]
			continue
		}
		if err := deadLetterTx(tx, st, seq, w.dead[seq]); err != nil {
			return err
		}
	}
	slices.Sort(w.remove)
	if err := removeTx(tx, st, w.remove); err != nil {
		return err
	}
	for _, op := range w.ops { // after the appends: their callbacks count on the sequence numbers
		if op.fn == nil {
			continue
		}
		if err := op.fn(tx, st); err != nil {
			return err
		}
	}
	taken := before - min(before, st.bytes)
	if w.releaseTo >= st.head && st.count > 0 {
		if _, err := dropPrefix(tx, st, w.releaseTo, touch); err != nil {
			return err
		}
	}
	if err := b.applyLimits(tx, w, touch); err != nil {
		return err
	}
	w.dl.stale = w.dl.stale || len(w.dead) > 0 || w.runs || w.dropped[2] > 0
	// Make room for what was appended from retired batches (less what
	// earlier deletions left free), and bring the live and retired data
	// within the budget.
	want := appended - min(appended, w.credit)
	if w.bounded && st.bytes+st.retired > w.budget {
		want = max(want, st.bytes+st.retired-w.budget)
	}
	if w.noTail {
		// The disk refuses: free the file's pages now, for the records
		// that wait.
		want = max(want, st.retired)
	}
	freed, err := reclaim(tx, st, want, touch)
	if err != nil {
		return err
	}
	w.credit = w.credit + freed - min(w.credit+freed, appended)
	st.dropBytes += w.dropped[0]
	st.dropAge += w.dropped[1]
	if top := max(w.next, st.next); b.reserveLow(top, *st) {
		st.reserved = top + reserveStep
	}
	w.headAt = headTime(tx, *st)
	b.touched(tx, int(appended+taken))
	return st.store(tx.Bucket(bucketMeta))
}

// commitFailed puts back what the failed commit took: its dead letters and
// removals wait for the next, its records stay pending in the tail.
func (b *Buffer) commitFailed(w *commitWork, err error) {
	b.markDamaged(err)
	err = fmt.Errorf("commit to buffer %s: %w", b.path, err)
	if isDiskFull(err) {
		b.dropReserve()
	}
	b.mu.Lock()
	b.failedLocked(err, w.now)
	for seq, r := range w.dead { // try again with the next commit
		if _, ok := b.toDead[seq]; !ok {
			b.toDead[seq] = r
		}
	}
	b.deadNow = nil
	b.toRemove = append(b.toRemove, w.remove...)
	// The records stay pending: written by a later commit or delivered
	// from memory, not acknowledged before.
	b.writing = [2]uint64{}
	b.popLocked()
	b.releaseHoldLocked()
	b.mu.Unlock()
	b.finish(w.ops, err)
}

// committed takes the commit's state as the buffer's, marks its records
// written and runs the callbacks of what became durable.
func (b *Buffer) committed(w *commitWork) {
	st := w.st
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
	recovered := b.succeededLocked(w.now)
	// A backlog has drained when what is left is small enough to copy in
	// a moment: then a compaction may give the file's space back.
	drained := b.st.count > 0 && st.count == 0 || b.st.bytes > drainedBytes && st.bytes <= drainedBytes
	b.st = st
	b.ratio = w.ratio
	b.headAt = w.headAt
	b.credit = w.credit
	b.dl = w.dl
	b.commits++
	for _, r := range w.recs {
		if i := b.tl.index(r.seq); i >= 0 {
			b.tl.set(i, written, nil)
		}
	}
	for seq, r := range w.requeue {
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
	logDrop := w.dropped != [3]uint64{} && time.Since(b.lastDrop) > 10*time.Second
	if logDrop {
		b.lastDrop = time.Now()
	}
	b.mu.Unlock()
	if logDrop {
		lim := w.lim
		b.log.Warn("buffer: limit reached; oldest records dropped",
			"dropped_max_bytes", w.dropped[0], "dropped_max_age", w.dropped[1], "dropped_dead_letter_limit", w.dropped[2],
			"total_max_bytes", st.dropBytes, "total_max_age", st.dropAge, "total_dead_letter_limit", st.dropDLLimit,
			"max_bytes", lim.MaxBytes, "max_age", lim.MaxAge, "max_dead_letter_bytes", lim.MaxDeadLetterBytes)
	}
	b.finish(w.ops, nil)
	if recovered {
		b.makeReserve()
	}
	if drained {
		b.compactIfSparse()
	}
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
