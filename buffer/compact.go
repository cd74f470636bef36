package buffer

// Offline maintenance: compaction and purge. Both need the file to
// themselves; they fail with ErrLocked while a ferry runs on it.

import (
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// compactTxSize bounds one write transaction of a compaction, so its memory
// does not grow with the file.
const compactTxSize = 8 << 20

// openExclusive opens the existing buffer file at path for writing, failing
// with ErrLocked if another process holds it.
func openExclusive(op, path string) (*bolt.DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%s %s: %w", op, path, err)
	}
	db, err := openBoltOnce(path, &bolt.Options{Timeout: offlineLockTimeout, FreelistType: bolt.FreelistMapType})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%s %s: %w", op, path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", op, path, err)
	}
	return db, nil
}

// Compact rewrites the buffer file at path without its free pages and
// retired batches: bbolt never shrinks a file, so after a backlog is
// delivered the space stays allocated until a compaction. The copy is
// written to path+".compact", fsynced, and renamed over path (the
// directory is fsynced too), so a crash leaves either the old file or the
// new one, both complete. Every live record, counter (the retired bytes
// become 0), dead-letter entry and the ID are kept; sequence numbers continue. It
// returns the file's size before and after. It fails with ErrLocked while
// another process (a running ferry) holds the file, and with
// ErrCorruptFile for a file Open would refuse as damaged (see checkSound;
// a file marked as damaged, see DamageMark, too): a copy of what bbolt's
// tree still reaches would replace the file the salvage and an inspection
// need. The caller must not open the buffer until Compact returns.
func Compact(path string) (before, after int64, err error) {
	if err := damageMarked(path); err != nil {
		return 0, 0, fmt.Errorf("compact buffer %s: %w", path, err)
	}
	src, err := openExclusive("compact buffer", path)
	if err != nil {
		return 0, 0, err
	}
	defer src.Close()
	return compactOpen(src, path)
}

// CompactIfSparse compacts the buffer file at path if it exists, is at least
// minSize bytes and at least minFreeFraction of it holds no live data (free
// pages, space preallocated beyond the last page, retired batches). It is
// meant for startup, before Open; it reports whether it compacted. A
// missing file is not an error; a file marked as damaged (see DamageMark)
// is left alone, and one Open would refuse as damaged fails with
// ErrCorruptFile, unchanged. It fails with ErrLocked while another process holds the file; if
// it fails otherwise, the file is unchanged and Open can go ahead.
func CompactIfSparse(path string, minSize int64, minFreeFraction float64) (bool, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("compact buffer %s: %w", path, err)
	}
	if fi.Size() < minSize || damageMarked(path) != nil {
		// A marked file is for Open to refuse and OpenOrMoveAside to
		// salvage as it is.
		return false, nil
	}
	src, err := openExclusive("compact buffer", path)
	if err != nil {
		return false, err
	}
	defer src.Close()
	info, err := fileView{db: src, path: path}.info()
	if err != nil {
		return false, fmt.Errorf("compact buffer %s: %w", path, err)
	}
	if info.FreeFraction() < minFreeFraction {
		return false, nil
	}
	if _, _, err := compactOpen(src, path); err != nil {
		return false, err
	}
	return true, nil
}

// compactOpen compacts src, open at path and locked, into a new file renamed
// over path.
func compactOpen(src *bolt.DB, path string) (before, after int64, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, fmt.Errorf("compact buffer %s: %w", path, err)
	}
	if err := checkSound(src, path); err != nil {
		return 0, 0, fmt.Errorf("compact buffer %s: %w", path, err)
	}
	tmp := path + ".compact"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, 0, fmt.Errorf("compact buffer %s: remove stale %s: %w", path, tmp, err)
	}
	dst, err := bolt.Open(tmp, fi.Mode().Perm(), &bolt.Options{Timeout: offlineLockTimeout, FreelistType: bolt.FreelistMapType, NoSync: true})
	if err != nil {
		return 0, 0, fmt.Errorf("compact buffer %s: create %s: %w", path, tmp, err)
	}
	err = compactInto(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = keepOwner(tmp, fi)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(path)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("compact buffer %s: %w", path, err)
	}
	nfi, err := os.Stat(path)
	if err != nil {
		return 0, 0, fmt.Errorf("compact buffer %s: %w", path, err)
	}
	return fi.Size(), nfi.Size(), nil
}

// compactInto copies what src holds into dst and fsyncs dst: the
// dead letters, the batches from the head on and the counters. Retired
// batches (all their records delivered or dropped) stay behind. A bbolt
// panic on a damaged page becomes an error wrapping ErrCorruptFile.
func compactInto(dst, src *bolt.DB) (err error) {
	return guard(func() error { return compactGuarded(dst, src) })
}

func compactGuarded(dst, src *bolt.DB) (err error) {
	if err := createBuckets(dst); err != nil {
		return err
	}
	w := fileWriter{out: dst, txSize: compactTxSize}
	err = src.View(func(tx *bolt.Tx) error {
		st, batches, err := readState(tx)
		if err != nil {
			return err
		}
		if dl := tx.Bucket(bucketDeadLetters); dl != nil {
			if err := dl.ForEach(func(k, v []byte) error { return w.add(bucketDeadLetters, k, v) }); err != nil {
				return err
			}
		}
		err = convertQuarantine(tx, &st, time.Now(), func(k []byte, e *deadEntry) error { // a file from before the dead-letter bucket
			v := appendDeadEntry(nil, e)
			st.dlRecords += e.records
			st.dlBytes += uint64(len(v))
			return w.add(bucketDeadLetters, k, v)
		})
		if err != nil {
			return err
		}
		c := batches.Cursor()
		for k, v := seekBatch(c, st.head); k != nil; k, v = c.Next() {
			if err := w.add(bucketBatches, k, v); err != nil {
				return err
			}
		}
		if err := w.flush(); err != nil {
			return err
		}
		st.retired = 0
		return dst.Update(func(tx *bolt.Tx) error { return st.store(tx.Bucket(bucketMeta)) })
	})
	if err != nil {
		return err
	}
	return dst.Sync()
}

// Purge removes, from the head, the records received before cutoff, and
// counts them as dropped for DropPurged. It stops at the first record
// received at or after cutoff, as MaxAge does, and at a damaged record
// (which it leaves for Verify and Salvage); a batch whose framing is broken
// is dead-lettered on the way, as everywhere. It needs the file to itself and
// fails with ErrLocked while another process (a running ferry) holds it. It
// returns how many records it removed. Their batches are retired: new
// records reuse the space, Compact gives it back to the file system.
func Purge(path string, cutoff time.Time) (removed uint64, err error) {
	db, err := openExclusive("purge buffer", path)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	err = guard(func() error {
		return db.Update(func(tx *bolt.Tx) error {
			st, _, err := readState(tx)
			if err != nil {
				return err
			}
			if err := migrateQuarantine(tx, &st, time.Now()); err != nil { // a file from before the dead-letter bucket
				return err
			}
			removed, err = dropWhile(tx, &st, func(raw []byte, _ uint64) bool {
				r, err := decode(raw) // a damaged record stops the purge: Verify and Salvage deal with it
				return err == nil && r.ReceivedAt.Before(cutoff)
			}, nil)
			if err != nil {
				return err
			}
			st.dropPurged += removed
			return st.store(tx.Bucket(bucketMeta))
		})
	})
	if err != nil {
		return 0, fmt.Errorf("purge buffer %s: %w", path, err)
	}
	if err := db.Close(); err != nil {
		return removed, fmt.Errorf("purge buffer %s: %w", path, err)
	}
	return removed, nil
}

// compactIfSparse runs on the committer after a commit drained a backlog
// (the buffer emptied, or fell to drainedBytes of records): if the file is
// large and mostly free or retired, it copies what is left into a new file
// and reopens it. Readers and appends wait meanwhile; little left to copy
// makes it quick. On failure the old file stays in use.
func (b *Buffer) compactIfSparse() {
	if b.opts.CompactMinSize < 0 {
		return
	}
	info, err := b.view().info()
	if err != nil || info.FileSize < b.opts.CompactMinSize || info.FreeFraction() < b.opts.CompactMinFree {
		return
	}
	b.dbMu.Lock()
	defer b.dbMu.Unlock()
	start := time.Now()
	tmp := b.path + ".compact"
	os.Remove(tmp)
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType, NoSync: true})
	if err == nil {
		err = compactInto(dst, b.db)
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		os.Remove(tmp)
		b.log.Warn("buffer: compaction after the backlog drained failed; keeping the file as it is", "path", b.path, "err", err)
		return
	}
	if err := b.db.Close(); err != nil {
		b.log.Warn("buffer: closing before compaction", "path", b.path, "err", err)
	}
	renamed := os.Rename(tmp, b.path)
	if renamed == nil {
		syncDir(b.path)
	} else {
		os.Remove(tmp)
	}
	db, f, err := openBolt(b.path, &bolt.Options{Timeout: b.opts.LockTimeout, FreelistType: bolt.FreelistMapType})
	if err != nil {
		// Nothing to fall back to: b.db stays closed, so every later
		// commit fails, ingest stops acknowledging and ferry exits with
		// the error; the file itself is intact for the next start.
		b.log.Error("buffer: cannot reopen the buffer file after compaction", "path", b.path, "err", err)
		return
	}
	b.db, b.file = db, f
	if renamed != nil {
		b.log.Warn("buffer: compaction could not replace the file; kept the old one", "path", b.path, "err", renamed)
		return
	}
	// The new file holds no retired batches and has no free pages.
	b.mu.Lock()
	b.st.retired = 0
	b.mu.Unlock()
	b.credit = 0
	b.dl = dlPages{stale: true} // the new file's pages are packed: measure again
	var after int64
	if fi, err := os.Stat(b.path); err == nil {
		after = fi.Size()
	}
	b.log.Info("buffer: file compacted after the backlog drained", "path", b.path,
		"before_bytes", info.FileSize, "after_bytes", after, "took", time.Since(start).Round(time.Millisecond))
}
