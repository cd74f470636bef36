package buffer

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The file deleted under a running buffer. A buffer writes through the
// file it opened: if the path is deleted (rm, a cleanup script) or
// replaced, commits still succeed, into a file that disappears when
// ferry stops, with every record in it acknowledged. So the committer
// checks that the path still names its file after each commit that
// writes (before its records count as durable), every
// fileCheckInterval, and at Close, and if not, copies the open file
// (everything it holds, read through the descriptor that still works) to
// the path again and goes on with the copy, loudly. A file found in its
// place is kept as path.replaced-<time>. Until the copy succeeds, the
// callbacks of records written into the lost file wait (holdFire), so
// nothing more is acknowledged; at Close they fail.

// fileCheckInterval is how often the committer checks the path while
// idle.
const fileCheckInterval = 10 * time.Second

// checkPath makes sure b.path names the open file, writing the file there
// again if it does not. It runs on the committer.
func (b *Buffer) checkPath() error {
	held, err := b.file.Stat()
	if err != nil {
		return fmt.Errorf("check buffer file %s: %w", b.path, err)
	}
	now, err := os.Stat(b.path)
	if err == nil && os.SameFile(held, now) {
		b.releaseFire()
		return nil
	}
	replaced := err == nil
	what := "deleted"
	if replaced {
		what = "replaced by another file"
	}
	b.log.Error("buffer: the buffer file was "+what+" while ferry runs; writing what it holds to its path again", "path", b.path)
	if err := b.recreate(replaced); err != nil {
		return fmt.Errorf("buffer file %s was %s and cannot be written again: %w", b.path, what, err)
	}
	b.mu.Lock()
	b.recreated++
	b.mu.Unlock()
	b.log.Warn("buffer: the buffer file is back at its path; nothing was lost", "path", b.path)
	b.releaseFire()
	return nil
}

// releaseFire lets the callbacks held by holdFire run, now that the path
// names the file again.
func (b *Buffer) releaseFire() {
	b.mu.Lock()
	held := b.holdFire
	b.holdFire = false
	b.mu.Unlock()
	if held {
		b.settle()
	}
}

// failHeldLocked fails the callbacks holdFire held at Close: their
// records are in a file no path names any more. b.mu is held.
func (b *Buffer) failHeldLocked(err error) {
	for i := range b.fireQ {
		if b.fireQ[i].state != failed {
			b.fireQ[i].state, b.fireQ[i].err = failed, err
		}
	}
	b.holdFire = false
}

// recreate copies the open file to b.path and reopens it there.
func (b *Buffer) recreate(replaced bool) error {
	if err := os.MkdirAll(filepath.Dir(b.path), 0o700); err != nil {
		return err
	}
	if replaced {
		keep := fmt.Sprintf("%s.replaced-%s", b.path, time.Now().UTC().Format("20060102T150405Z"))
		if err := os.Rename(b.path, keep); err != nil {
			return err
		}
		b.log.Warn("buffer: the file found at the buffer's path is kept aside", "path", keep)
	}
	tmp := b.path + ".recreate"
	os.Remove(tmp)
	b.dbMu.Lock()
	defer b.dbMu.Unlock()
	err := guard(func() error { return b.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(tmp, 0o600) }) })
	if err == nil {
		err = syncFile(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, b.path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	syncDir(b.path)
	if err := b.db.Close(); err != nil {
		b.log.Warn("buffer: closing the deleted file", "err", err)
	}
	db, f, err := openBolt(b.path, &bolt.Options{Timeout: b.opts.LockTimeout, FreelistType: bolt.FreelistMapType})
	if err != nil {
		// Nothing to fall back to: every later commit fails, so nothing
		// more is acknowledged; the copy is complete for the next start.
		return fmt.Errorf("reopen the copy: %w", err)
	}
	b.db, b.file = db, f
	return nil
}

// syncFile fsyncs the file at path.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
