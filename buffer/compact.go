package buffer

// Offline maintenance: compaction and purge. Both need the file to
// themselves; they fail with ErrLocked while a ferry runs on it.

import (
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
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
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("%s %s: %w", op, path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", op, path, err)
	}
	return db, nil
}

// Compact rewrites the buffer file at path without its free pages: bbolt
// never shrinks a file, so after a backlog is delivered the space stays
// allocated until a compaction. The copy is written to path+".compact",
// fsynced, and renamed over path (the directory is fsynced too), so a crash
// leaves either the old file or the new one, both complete. Every record,
// counter and quarantined record is kept; sequence numbers continue. It
// returns the file's size before and after. It fails with ErrLocked while
// another process (a running ferry) holds the file; the caller must not
// open the buffer until Compact returns.
func Compact(path string) (before, after int64, err error) {
	src, err := openExclusive("compact buffer", path)
	if err != nil {
		return 0, 0, err
	}
	defer src.Close()
	return compactOpen(src, path)
}

// CompactIfSparse compacts the buffer file at path if it exists, is at least
// minSize bytes and at least minFreeFraction of it holds no data (free pages
// and space preallocated beyond the last page). It is meant for startup,
// before Open; it reports whether it compacted. A missing file is not an
// error. It fails with ErrLocked while another process holds the file; if
// it fails otherwise, the file is unchanged and Open can go ahead.
func CompactIfSparse(path string, minSize int64, minFreeFraction float64) (bool, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("compact buffer %s: %w", path, err)
	}
	if fi.Size() < minSize {
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

// compactInto copies src into dst and fsyncs dst. A bbolt panic on a
// damaged page becomes an error wrapping ErrCorrupt.
func compactInto(dst, src *bolt.DB) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: bbolt structure damaged: %v (try ferry buffer verify --salvage)", ErrCorrupt, r)
		}
	}()
	if err := bolt.Compact(dst, src, compactTxSize); err != nil {
		return err
	}
	return dst.Sync()
}

// Purge removes, from the head, the records received before cutoff, and
// counts them as dropped for DropPurged. It stops at the first record
// received at or after cutoff, as MaxAge does, and at a damaged record
// (which it leaves for Verify and Salvage); a batch whose framing is broken
// is quarantined on the way, as everywhere. It needs the file to itself and
// fails with ErrLocked while another process (a running ferry) holds it. It
// returns how many records it removed. The space they took is free for new
// records; Compact gives it back to the file system.
func Purge(path string, cutoff time.Time) (removed uint64, err error) {
	db, err := openExclusive("purge buffer", path)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		st, _, err := readState(tx)
		if err != nil {
			return err
		}
		removed, err = dropWhile(tx, &st, func(raw []byte, _ uint64) bool {
			r, err := decode(raw) // a damaged record stops the purge: Verify and Salvage deal with it
			return err == nil && r.ReceivedAt.Before(cutoff)
		})
		if err != nil {
			return err
		}
		st.dropPurged += removed
		return st.store(tx.Bucket(bucketMeta))
	})
	if err != nil {
		return 0, fmt.Errorf("purge buffer %s: %w", path, err)
	}
	if err := db.Close(); err != nil {
		return removed, fmt.Errorf("purge buffer %s: %w", path, err)
	}
	return removed, nil
}
