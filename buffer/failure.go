package buffer

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// Failing commits. A commit that fails (the disk is full, the card
// refuses writes) loses nothing and stops nothing: the records it was to
// write stay in the tail, pending, their callbacks not run, so ingest does
// not acknowledge them and the broker holds what comes after (Receive
// Maximum). The forwarder goes on: with WriteDelay it delivers the tail's
// records from memory, which makes them durable; releases and removals go
// on being committed.
//
// A full disk needs more: a commit that writes records grows the file,
// and even one that only releases needs a few free pages. So the buffer
// keeps a reserve file next to its own (path.reserve, reserveBytes of
// allocated blocks). At ENOSPC it deletes the reserve: the space lets
// commits that release and remove go through, and while the disk stays
// full commits leave the tail out (records wait in memory) and delete
// retired batches at once, so that the file's own free pages take the
// next records instead of the file system's. The tail is tried again
// with a backoff (failedCommitPause doubling up to maxFailedCommitPause);
// once a commit writes it, the reserve is made again.

// reserveBytes is the size of the reserve file.
const reserveBytes = 1 << 20

// maxFailedCommitPause bounds the backoff between attempts to write the
// tail while commits fail.
const maxFailedCommitPause = 10 * time.Second

// commitFailure is the state of failing commits; it is guarded by
// Buffer.mu.
type commitFailure struct {
	err      error     // the last commit's error; nil: commits succeed
	diskFull bool      // err is ENOSPC or EDQUOT
	since    time.Time // the first failure of this run of failures
	count    uint64    // failed commits since Open
	backoff  time.Duration
	retryAt  time.Time // the tail is tried again from then on
	logged   time.Time // the last time a failure was logged
	noTail   bool      // the commit under way leaves the tail out
}

// isDiskFull reports whether err is for want of space.
func isDiskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// failed records a failed commit. b.mu is held.
func (b *Buffer) failedLocked(err error, now time.Time) {
	f := &b.fail
	first := f.err == nil
	if first {
		f.since = now
	}
	f.err = err
	f.count++
	f.diskFull = isDiskFull(err)
	if !f.noTail { // a commit with the tail failed: back off
		f.backoff = min(max(2*f.backoff, failedCommitPause), maxFailedCommitPause)
		f.retryAt = now.Add(f.backoff)
	}
	if first || now.Sub(f.logged) >= 30*time.Second {
		f.logged = now
		b.log.Error("buffer: commit failed; records wait in memory, not acknowledged, and the broker holds the rest until the disk takes them",
			"path", b.path, "err", err, "disk_full", f.diskFull, "failing_since", f.since.Format(time.RFC3339),
			"failed_commits", f.count, "records_in_memory", b.tl.pending, "next_try_in", f.backoff)
	}
}

// succeededLocked records a successful commit; it returns whether it
// ended a run of failures: the commit wrote the tail, or no record waits
// to be written. b.mu is held.
func (b *Buffer) succeededLocked(now time.Time) (recovered bool) {
	f := &b.fail
	if f.err == nil || f.noTail && b.tl.pending > 0 {
		return false
	}
	b.log.Info("buffer: commits succeed again", "path", b.path, "failing_for", now.Sub(f.since).Round(time.Second),
		"failed_commits", f.count)
	*f = commitFailure{count: f.count}
	return true
}

// leaveTailOut reports whether a commit now leaves the tail out: commits
// fail and the next attempt with the tail is not due yet. b.mu is held.
func (b *Buffer) leaveTailOut(now time.Time) bool {
	return b.fail.err != nil && now.Before(b.fail.retryAt)
}

// reservePath is the reserve file's name.
func (b *Buffer) reservePath() string { return b.path + ".reserve" }

// makeReserve creates the reserve file if it is not there, with its
// blocks allocated. Failing (no space for it yet) is not an error: it is
// tried again after the next commit that ends a run of failures.
func (b *Buffer) makeReserve() {
	p := b.reservePath()
	if fi, err := os.Stat(p); err == nil && fi.Size() == reserveBytes {
		return
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		b.log.Warn("buffer: cannot create the reserve file for a full disk", "path", p, "err", err)
		return
	}
	err = allocate(f, reserveBytes)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		os.Remove(p)
		b.log.Warn("buffer: no room for the reserve file for a full disk yet", "path", p, "err", err)
	}
}

// dropReserve deletes the reserve file, giving its space to the buffer.
func (b *Buffer) dropReserve() {
	if err := os.Remove(b.reservePath()); err == nil {
		b.log.Warn("buffer: disk full; the reserve file is deleted to let releases through", "path", b.reservePath(), "bytes", reserveBytes)
	}
}

// allocate gives f size bytes of allocated blocks, by writing them: the
// reserve is written once, when it is first made, so portability costs
// nothing worth a system-specific call.
func allocate(f *os.File, size int) error {
	zero := make([]byte, 64<<10)
	for off := 0; off < size; off += len(zero) {
		if _, err := f.WriteAt(zero[:min(len(zero), size-off)], int64(off)); err != nil {
			return err
		}
	}
	return nil
}

// abandonTailLocked fails the tail's pending records at Close when the
// disk would not take them: their callbacks get err, so ingest does not
// acknowledge them and the broker delivers them again to the next run.
// b.mu is held.
func (b *Buffer) abandonTailLocked(err error) {
	l := b.tl.live()
	for i := range l {
		if l[i].state == pending {
			b.tl.set(i, failed, err)
		}
	}
	b.popLocked()
}
