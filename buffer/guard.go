package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"runtime/debug"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Damage. bbolt reads the file through a memory map and trusts its pages:
// a page past the end of a truncated file faults (SIGBUS), a page of
// garbage makes bbolt panic. Either would end the process, and Go exits 2
// on both. Every transaction therefore runs under guard, which makes faults
// on the map panics for its goroutine and turns any panic into an error
// wrapping ErrCorruptFile; bbolt rolls the transaction back on the way
// (its View and Update defer the rollback). At Open, checkFile walks the
// file's structure before the buffer trusts it, so a damaged file is
// found and moved aside (OpenOrMoveAside) before anything reads it.

// guard runs fn with faults on the memory map turned into panics, and any
// panic turned into an error wrapping ErrCorruptFile.
func guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", ErrCorruptFile, p)
		}
	}()
	return fn()
}

// checkFile checks a file just opened before it is trusted: both meta
// pages' headers, that the file is as long as the pages bbolt's meta page
// says it holds (a truncated file faults on the missing ones), and the
// whole structure, read from the file (checkPages: every page of the tree,
// the freelist). The records' own checksums are checked as they are read.
// Any finding wraps ErrCorruptFile. It reads about the whole file (see
// Open for what that costs).
func checkFile(db *bolt.DB, path string) error {
	return guard(func() error {
		return db.View(func(tx *bolt.Tx) error { return checkTx(tx, path) })
	})
}

// checkLastBatch refuses a file whose last batch reaches the counters'
// next sequence number: a damaged key or counter, which would give a
// record's number to another.
func checkLastBatch(batches *bolt.Bucket, next uint64) error {
	if k, v := batches.Cursor().Last(); k != nil {
		base := binary.BigEndian.Uint64(k)
		_, n, _ := parseBatch(base, v)
		if last := base + uint64(n) - 1; last >= next {
			return fmt.Errorf("%w: meta next_seq %d is not above the last record %d", ErrCorruptFile, next, last)
		}
	}
	return nil
}

// checkSound refuses, with ErrCorruptFile, a file Open would refuse as
// damaged: checkFile's check, the last batch against the counters, a
// damage mark. Compaction runs it first: a copy through the tree of a
// damaged file would replace it with what the tree still reaches.
func checkSound(db *bolt.DB, path string) error {
	if err := damageMarked(path); err != nil {
		return err
	}
	return guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			if err := checkTx(tx, path); err != nil {
				return err
			}
			st, batches, err := readState(tx)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrCorruptFile, err)
			}
			return checkLastBatch(batches, st.next)
		})
	})
}

// checkTx is checkFile's check in tx; it must run under guard.
func checkTx(tx *bolt.Tx, path string) error {
	if err := checkMetaPages(path, true); err != nil {
		return err
	}
	if fi, err := os.Stat(path); err != nil {
		return err
	} else if fi.Size() < tx.Size() {
		return fmt.Errorf("%w: the file is %d bytes but its pages reach %d: truncated", ErrCorruptFile, fi.Size(), tx.Size())
	}
	return checkPages(path)
}

// checkMetaPages reads, from the file rather than the map, what bbolt
// trusts before anything else: the meta pages, and through the one in use
// (the sound one with the higher transaction ID, as bbolt picks it) the
// file's length and the freelist page's header. bbolt.Open reads the
// freelist page through the map, and a fault or panic there would leave
// the file mapped, and so locked, for the life of the process; bbolt's
// consistency check reads both meta pages, on a goroutine where a panic
// cannot be recovered. One sound meta page is enough (bbolt uses it; with
// none, bbolt.Open fails by itself). A new,
// empty file passes. With both, each meta page's header must be sound
// (a meta page whose checksum fails bbolt skips by itself, and its next
// commit writes it again).
func checkMetaPages(path string, both bool) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return err
	}
	m0, ok0, hdr0 := readMeta(f, 0, 0)
	ps := int64(os.Getpagesize())
	if ok0 {
		ps = int64(m0.pageSize)
	}
	m1, ok1, hdr1 := readMeta(f, ps, 1)
	switch {
	case both && !hdr0:
		return fmt.Errorf("%w: meta page 0 is damaged", ErrCorruptFile)
	case both && !hdr1:
		return fmt.Errorf("%w: meta page 1 is damaged", ErrCorruptFile)
	case !ok0 && !ok1:
		return nil
	}
	m := m0
	if !ok0 || ok1 && m1.txid > m0.txid {
		m = m1
	}
	if end := int64(m.pgid) * ps; fi.Size() < end {
		return fmt.Errorf("%w: the file is %d bytes but its pages reach %d: truncated", ErrCorruptFile, fi.Size(), end)
	}
	if m.freelist == ^uint64(0) { // not stored (NoFreelistSync)
		return nil
	}
	hdr := make([]byte, 16)
	if _, err := f.ReadAt(hdr, int64(m.freelist)*ps); err != nil {
		return fmt.Errorf("%w: freelist page %d: %w", ErrCorruptFile, m.freelist, err)
	}
	le := binary.LittleEndian
	const freelistFlag = 0x10
	if le.Uint64(hdr) != m.freelist || le.Uint16(hdr[8:])&freelistFlag == 0 ||
		int64(m.freelist+uint64(le.Uint32(hdr[12:]))+1)*ps > fi.Size() {
		return fmt.Errorf("%w: freelist page %d is damaged", ErrCorruptFile, m.freelist)
	}
	return nil
}

// rawMeta is the part of a bbolt meta page checkMetaPages needs.
type rawMeta struct {
	pageSize                   uint32
	root, freelist, pgid, txid uint64
}

// readMeta reads meta page id at off and reports whether it is sound:
// bbolt's magic, version 2 and its checksum (FNV-64a of the meta before
// the checksum), and whether its page header is (the ID and the meta
// flag, which bbolt asserts on whenever it reads the page).
func readMeta(f *os.File, off int64, id uint64) (m rawMeta, ok, header bool) {
	p := make([]byte, 16+64)
	if _, err := f.ReadAt(p, off); err != nil {
		return rawMeta{}, false, false
	}
	le := binary.LittleEndian
	const metaFlag, magic, version = 0x04, 0xED0CDAED, 2
	header = le.Uint64(p) == id && le.Uint16(p[8:])&metaFlag != 0
	b := p[16:]
	h := fnv.New64a()
	h.Write(b[:56])
	if !header || le.Uint32(b) != magic || le.Uint32(b[4:]) != version || le.Uint64(b[56:]) != h.Sum64() {
		return rawMeta{}, false, header
	}
	return rawMeta{pageSize: le.Uint32(b[8:]), root: le.Uint64(b[16:]), freelist: le.Uint64(b[32:]), pgid: le.Uint64(b[40:]), txid: le.Uint64(b[48:])}, true, true
}

// markDamaged records the first damage found while running (a read or a
// commit that met a damaged page) and closes Damaged's channel.
func (b *Buffer) markDamaged(err error) {
	if !errors.Is(err, ErrCorruptFile) {
		return
	}
	b.damageOnce.Do(func() {
		b.damage = err
		b.log.Error("buffer: the buffer file is damaged; ferry stops, and on its next start moves the file aside and salvages what is readable",
			"path", b.path, "err", err)
		if err := writeDamageMark(b.path, b.damage); err != nil {
			b.log.Error("buffer: cannot mark the file as damaged; unless Open's check finds the damage too, the next start opens it as it is", "path", b.path, "err", err)
		}
		close(b.damaged)
		b.signal() // the committer fails what waits in memory
	})
}

// Damaged returns a channel that is closed once the buffer met damage in
// its file while running (a truncated file, a page of garbage). From then
// on every read and commit fails with the damage (a transaction that met
// it may have left bbolt's locks held), the records in memory are failed
// (not acknowledged), and Close does not close the file. The process
// should exit: the damage is marked beside the file, the next Open
// refuses the file for it, and OpenOrMoveAside moves the file aside and
// salvages what is readable (ferry exits, and its service manager starts
// it again). Damage reports the error.
func (b *Buffer) Damaged() <-chan struct{} { return b.damaged }

// Damage returns what Damaged reported, or nil.
func (b *Buffer) Damage() error {
	select {
	case <-b.damaged:
		return b.damage
	default:
		return nil
	}
}

// DamageMark is the file that marks the buffer at path as damaged:
// path.damaged, holding the text of the damage the buffer met while
// running. Open refuses a file with a mark (ErrCorruptFile), so that
// OpenOrMoveAside moves it aside and salvages it even when Open's own
// check finds nothing: bbolt asserts on more than that check reads, and a
// read error may not come back.
// Without it, a process that exits on damage could meet the same damage
// after every start. MoveAside removes the mark with the file; a salvaged
// file put in the buffer's place by hand needs the mark removed too.
// Verify reports a mark as a problem.
func DamageMark(path string) string { return path + ".damaged" }

// writeDamageMark writes path's damage mark with err's text, durably.
func writeDamageMark(path string, err error) error {
	f, ferr := os.OpenFile(DamageMark(path), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if ferr != nil {
		return ferr
	}
	_, werr := fmt.Fprintln(f, err)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return werr
	}
	return syncDir(path)
}

// damageMarked returns the damage path's mark records (wrapping
// ErrCorruptFile), or nil when there is no mark.
func damageMarked(path string) error {
	text, err := os.ReadFile(DamageMark(path))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("%w: it is marked as damaged, and the mark cannot be read: %w", ErrCorruptFile, err)
	}
	return fmt.Errorf("%w: damage met while it was open: %s (marked in %s, which goes when the file is moved aside)", ErrCorruptFile,
		strings.TrimSpace(strings.TrimPrefix(string(text), ErrCorruptFile.Error()+": ")), DamageMark(path))
}
