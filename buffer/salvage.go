package buffer

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Salvage copies every intact live record into a new buffer file at dst,
// keeping its sequence number, and sets the damaged ones aside in the new
// file's dead-letter bucket (ReasonUndecodable, or ReasonBrokenBatch for a
// batch whose framing is broken; counted), along with the old file's
// intact dead-letter entries. The live and dead-letter counters are
// recomputed; the ID, drop counts, dead-letter counts by reason and the
// next sequence number carry over, so the new file continues the same log
// when it replaces the old one. dst must not exist. It returns how many
// records were copied.
//
// If the old file's structure is damaged so that its tree cannot be read
// to the end (a truncated file, pages of garbage), Salvage scans the file
// page by page instead (see salvageRaw): what is readable is kept,
// whatever the tree's state, and the error is nil.
func (r *ReadOnly) Salvage(dst string) (copied int, err error) {
	res, err := r.salvage(dst, false)
	return res.copied, err
}

// salvaged is what a salvage did.
type salvaged struct {
	copied int
	// complete: the new file holds a copy of everything the old one
	// held (every live record, copied or set aside with its bytes, and
	// every dead letter), as the old file's own counters account for
	// it. Only a salvage through the tree can tell; page by page never
	// is.
	complete bool
	next     uint64 // the new file's next sequence number: the old file's records are all below it
	lineage  string // the new file's lineage: the old one's if complete (see state.lineage)
}

// salvage is Salvage. With continues, a salvage that is complete carries
// the old file's lineage over (MoveAside's, which puts it in the old
// file's place); otherwise the new file starts its own, as one made by hand may be
// put in place of a buffer that has gone on since (see pruneAside).
func (r *ReadOnly) salvage(dst string, continues bool) (salvaged, error) {
	res, err := r.salvageTree(dst, continues)
	if err == nil || !errors.Is(err, ErrCorruptFile) {
		return res, err
	}
	os.Remove(dst)
	var old *state
	r.v.viewTx(func(tx *bolt.Tx) error { // the counters, if their bucket is readable
		if meta := tx.Bucket(bucketMeta); meta != nil {
			st := state{next: 1, head: 1}
			st.load(meta)
			old = &st
		}
		return nil
	})
	copied, err := salvageRaw(r.v.path, dst, old)
	return salvaged{copied: copied}, err
}

// SalvageFile is Salvage on the file at src: through bbolt if it can open
// the file, else page by page (a file whose meta pages are both damaged).
func SalvageFile(src, dst string) (int, error) {
	res, err := salvageFile(src, dst, false)
	return res.copied, err
}

func salvageFile(src, dst string, continues bool) (salvaged, error) {
	r, err := OpenReadOnly(src)
	if errors.Is(err, ErrLocked) {
		return salvaged{}, err
	}
	if err != nil {
		copied, err := salvageRaw(src, dst, readCounters(src))
		return salvaged{copied: copied}, err
	}
	defer r.Close()
	return r.salvage(dst, continues)
}

// readCounters reads the meta bucket of a file OpenReadOnly refused (a
// truncated one, say), if bbolt can reach it: salvage then knows how many
// records the file held, and counts those it could not read. A fault on
// the way leaves the file mapped (and share-locked) for the life of the
// process: it is a file moved aside, which nothing opens exclusively.
func readCounters(path string) *state {
	var st *state
	guard(func() error {
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		if err != nil {
			return err
		}
		defer db.Close()
		return db.View(func(tx *bolt.Tx) error {
			if meta := tx.Bucket(bucketMeta); meta != nil {
				s := state{next: 1, head: 1}
				s.load(meta)
				st = &s
			}
			return nil
		})
	})
	return st
}

// salvageTree is Salvage through bbolt's tree.
func (r *ReadOnly) salvageTree(dst string, continues bool) (res salvaged, err error) {
	if _, err := os.Lstat(dst); err == nil {
		return res, fmt.Errorf("salvage %s into %s: %w", r.v.path, dst, os.ErrExist)
	}
	out, err := bolt.Open(dst, 0o600, &bolt.Options{Timeout: offlineLockTimeout, FreelistType: bolt.FreelistMapType, NoSync: true})
	if err != nil {
		return res, fmt.Errorf("salvage %s: create %s: %w", r.v.path, dst, err)
	}
	if err := createBuckets(out); err != nil {
		out.Close()
		return res, fmt.Errorf("salvage %s: create %s: %w", r.v.path, dst, err)
	}
	s := salvager{out: out, w: fileWriter{out: out, txSize: 4 << 20}, st: state{next: 1, head: 1}, tree: true, continues: continues}
	readErr := r.v.viewTx(func(tx *bolt.Tx) error {
		var mis *misplacedError
		if err := checkTx(tx, r.v.path); err != nil && !errors.As(err, &mis) {
			return err // the tree cannot be trusted to the end: page by page
		}
		if meta := tx.Bucket(bucketMeta); meta != nil {
			s.old.load(meta)
			s.expect = s.old.count
		} else {
			s.left++ // nothing to tell what the file held
		}
		if dl := tx.Bucket(bucketDeadLetters); dl != nil {
			if err := dl.ForEach(s.deadLetter); err != nil {
				return err
			}
		}
		err := convertQuarantine(tx, &s.st, time.Now(), func(k []byte, e *deadEntry) error { // a file from before the dead-letter bucket
			s.left++ // its counters do not account for these: not known complete
			v := appendDeadEntry(nil, e)
			s.st.dlRecords += e.records
			s.st.dlBytes += uint64(len(v))
			return s.w.add(bucketDeadLetters, k, v)
		})
		if err != nil {
			return err
		}
		batches := tx.Bucket(bucketBatches)
		if batches == nil {
			return errors.New("not a ferry buffer: its batches bucket is missing")
		}
		// Batches under a damaged key (mis) whose checksum holds under
		// their own first sequence number are taken under it, in its
		// place among the others.
		var moved []keyedBatch
		if mis != nil {
			moved = misplacedBatches(batches)
		}
		err = batches.ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				s.left++
				return nil
			}
			base := binary.BigEndian.Uint64(k)
			for ; len(moved) > 0 && moved[0].base < base; moved = moved[1:] {
				if err := s.batch(batches, moved[0].base, moved[0].v); err != nil {
					return err
				}
			}
			if mis != nil {
				if own, ok := verifiedBase(v); ok && own != base {
					return nil // in moved
				}
			}
			if base >= s.old.next && base < s.old.reserved && s.old.next > 1 {
				// A damaged key (no batch is written at or beyond next):
				// taken as it is, its records would have numbers that
				// records delivered from memory had. Lost, and counted.
				s.left++
				return nil
			}
			return s.batch(batches, base, v)
		})
		for ; err == nil && len(moved) > 0; moved = moved[1:] {
			err = s.batch(batches, moved[0].base, moved[0].v)
		}
		return err
	})
	if readErr != nil {
		out.Close()
		return res, fmt.Errorf("salvage %s into %s: %w", r.v.path, dst, readErr)
	}
	err = s.finish()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(dst)
	}
	res = salvaged{copied: s.copied, next: s.st.next}
	if err != nil {
		return res, fmt.Errorf("salvage %s into %s: %w", r.v.path, dst, err)
	}
	res.complete, res.lineage = s.complete(), s.st.lineage
	return res, nil
}

// keyedBatch is a batch's value (valid for the transaction) under its own
// first sequence number.
type keyedBatch struct {
	base uint64
	v    []byte
}

// verifiedBase returns the first sequence number batch v holds under its
// checksum: a batch of version 2 whose checksum holds.
func verifiedBase(v []byte) (uint64, bool) {
	base, hasBase, _, _, ok := batchHeader(v)
	if !ok || !hasBase {
		return 0, false
	}
	_, _, err := parseBatch(base, v)
	return base, err == nil
}

// misplacedBatches returns the batches whose checksum holds under a first
// sequence number other than their key, in the order of those numbers.
func misplacedBatches(batches *bolt.Bucket) []keyedBatch {
	var moved []keyedBatch
	batches.ForEach(func(k, v []byte) error {
		if own, ok := verifiedBase(v); ok && len(k) == 8 && own != binary.BigEndian.Uint64(k) {
			moved = append(moved, keyedBatch{own, v})
		}
		return nil
	})
	slices.SortFunc(moved, func(a, b keyedBatch) int { return cmp.Compare(a.base, b.base) })
	return moved
}

// salvageRaw salvages the file at src page by page, reading the file
// rather than mapping it: every leaf page whose header is sound is parsed,
// and every element with a sequence-number key whose value is a batch
// with a good checksum is a candidate, under the first sequence number it
// holds (version 2; see batch.go), else under its key. Freed pages hold
// older copies of batches; of the copies of one number, take keeps the
// newest (removals only ever empty records), and the batches before the
// head are left out. old is the damaged file's counters, if
// its meta bucket could be read; else they are taken from the meta
// bucket's leaf pages found on the way, each counter at its highest value
// (they only grow). Dead letters are not recovered this way.
func salvageRaw(src, dst string, old *state) (copied int, err error) {
	if _, err := os.Lstat(dst); err == nil {
		return 0, fmt.Errorf("salvage %s into %s: %w", src, dst, os.ErrExist)
	}
	f, err := os.Open(src)
	if err != nil {
		return 0, fmt.Errorf("salvage %s: %w", src, err)
	}
	defer f.Close()
	sc, err := scanPages(f)
	if err != nil {
		return 0, fmt.Errorf("salvage %s: %w", src, err)
	}
	// How many records the old file held: its count, if its meta bucket
	// could be read. Else it is not known (the numbers between head and
	// next include records delivered from memory, never written, and the
	// reservations of past runs): the loss is logged, not counted.
	var expect uint64
	if old != nil {
		expect = old.count
		// The meta bucket bbolt reads may be an older copy (one meta page
		// lost, bbolt uses the other): next and the reservation are the
		// highest found, for the keys' bound and for the new file, which
		// must not give out a number the old one may have.
		o := old.clone()
		o.next, o.reserved = max(o.next, sc.meta.next), max(o.reserved, sc.meta.reserved)
		old = &o
		sc.dropBeyond(old.next, old.reserved)
	} else {
		old = &sc.meta // the highest counters found: next may be an old copy's, and not bound the keys
	}
	out, err := bolt.Open(dst, 0o600, &bolt.Options{Timeout: offlineLockTimeout, FreelistType: bolt.FreelistMapType, NoSync: true})
	if err != nil {
		return 0, fmt.Errorf("salvage %s: create %s: %w", src, dst, err)
	}
	if err := createBuckets(out); err != nil {
		out.Close()
		return 0, fmt.Errorf("salvage %s: create %s: %w", src, dst, err)
	}
	s := salvager{out: out, w: fileWriter{out: out, txSize: 4 << 20}, st: state{next: 1, head: 1}, old: *old, expect: expect}
	if sc.end > 0 {
		s.lastSeq = sc.end - 1 // every number a batch found used, kept or left out (damaged keys aside)
	}
	err = sc.each(f, func(base uint64, v []byte) error { return s.batch(nil, base, v) })
	if err == nil {
		err = s.finish()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(dst)
	}
	if err != nil {
		return s.copied, fmt.Errorf("salvage %s into %s: %w", src, dst, err)
	}
	return s.copied, nil
}

// pageScan is what scanPages found: where the newest intact copy of each
// batch lies, and the meta counters at their highest.
type pageScan struct {
	pageSize int
	batches  map[uint64]batchCopy
	conflict map[uint64]bool // keys found on batches of different spans
	meta     state
	end      uint64 // past the last sequence number of every batch found
}

// batchCopy is where a batch was found: its value's offset and length in
// the file, and how many live records it holds.
type batchCopy struct {
	off   int64
	n     int
	live  int
	count int    // records, live or removed: the sequence numbers it spans
	pred  uint64 // the key of the batch before it in its page; 0: none
	tiles bool   // it starts where the batch before it in its page ends
	// verified: its numbers are known (a batch of version 2 whose
	// checksum holds), not only its key's.
	verified bool
}

// scanPages reads f page by page. The page size is the first meta page's
// if it is sound, else bbolt's default.
func scanPages(f *os.File) (*pageScan, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	sc := &pageScan{pageSize: 4096, batches: map[uint64]batchCopy{}, conflict: map[uint64]bool{}, meta: state{next: 1, head: 1}}
	hdr := make([]byte, 32)
	// The page size, from a sound meta page: page 0, or page 1 at the
	// page sizes kernels use.
	for _, off := range []int64{0, 4096, 8192, 16384, 65536} {
		if _, err := f.ReadAt(hdr, off); err == nil && binary.LittleEndian.Uint16(hdr[8:])&0x04 != 0 &&
			binary.LittleEndian.Uint32(hdr[16:]) == 0xED0CDAED {
			if ps := int(binary.LittleEndian.Uint32(hdr[24:])); ps >= 1024 && ps <= 1<<16 && (off == 0 || int64(ps) == off) {
				sc.pageSize = ps
				break
			}
		}
	}
	const leafFlag, bucketLeafFlag = 0x02, 0x01
	ps := int64(sc.pageSize)
	pages := fi.Size() / ps
	buf := make([]byte, ps)
	var cands []pageBatch
	for id := int64(2); id < pages; id++ { // every page: a flipped overflow count must not hide the next ones
		if _, err := f.ReadAt(buf[:ps], id*ps); err != nil {
			break
		}
		le := binary.LittleEndian
		if int64(le.Uint64(buf)) != id || le.Uint16(buf[8:])&leafFlag == 0 {
			continue
		}
		count, overflow := int(le.Uint16(buf[10:])), int64(le.Uint32(buf[12:]))
		if id+overflow >= pages || 16+count*16 > int(ps) {
			continue
		}
		page := buf[:ps]
		if overflow > 0 {
			page = make([]byte, (overflow+1)*ps)
			if _, err := f.ReadAt(page, id*ps); err != nil {
				continue
			}
		}
		cands = cands[:0]
		for i := range count {
			e := page[16+i*16:]
			flags, pos, ksize, vsize := le.Uint32(e), int(le.Uint32(e[4:])), int(le.Uint32(e[8:])), int(le.Uint32(e[12:]))
			start := 16 + i*16 + pos
			if pos <= 0 || start+ksize+vsize > len(page) || start+ksize+vsize < start {
				continue
			}
			k, v := page[start:start+ksize], page[start+ksize:start+ksize+vsize]
			if flags&bucketLeafFlag != 0 {
				sc.inlineBucket(v) // the meta bucket is small enough to live in its parent's page
				continue
			}
			sc.metaValue(k, v)
			if ksize != 8 {
				continue
			}
			// A batch of version 2 holds its base under its checksum:
			// where that holds, the base is its number, whatever its key.
			// Every other key takes part in the order check
			// (flippedKey), a damaged batch's too: its neighbours' keys
			// are what tells a flipped key from a sound one.
			c := pageBatch{base: binary.BigEndian.Uint64(k)}
			base, hasBase, _, _, _ := batchHeader(v)
			if !hasBase {
				base = c.base
			}
			if recs, nrecs, perr := parseBatch(base, v); perr == nil {
				c.base, c.intact, c.verified = base, true, hasBase
				c.off, c.n, c.count = id*ps+int64(start+ksize), vsize, nrecs
				for _, r := range recs {
					if len(r) > 0 {
						c.live++
					}
				}
			}
			cands = append(cands, c)
		}
		var pred pageBatch // the intact batch before, in the page
		for i, c := range cands {
			if !c.intact || !c.verified && flippedKey(cands, i) {
				continue // damaged; or its records' sequence numbers are not known: lost, not misplaced
			}
			c.pred = pred.base
			c.tiles = pred.base != 0 && pred.base+uint64(pred.count) == c.base
			pred = c
			sc.take(c)
		}
	}
	for base, c := range sc.batches {
		sc.end = max(sc.end, base+uint64(c.count))
	}
	return sc, nil
}

// take keeps c, a batch found intact in a page, unless a copy of the same
// number found before is the one to keep.
func (sc *pageScan) take(c pageBatch) {
	switch old, ok := sc.batches[c.base]; {
	case ok && old.verified && !c.verified:
		// A copy that holds its numbers is kept over one that does
		// not: a copy of version 1 is older (a batch rewritten is
		// written in version 2), or its key is damaged.
	case c.verified && (!ok || !old.verified):
		sc.batches[c.base] = c.batchCopy
		delete(sc.conflict, c.base)
	case c.verified:
		// Two copies of one batch, each under its own numbers: the
		// longer (a commit retried after one that failed wrote the
		// batch again with the records that came since; the
		// shorter's are all in it), else the one with fewer live
		// records, the newer.
		if c.count > old.count || c.count == old.count && c.live < old.live {
			sc.batches[c.base] = c.batchCopy
		}
	case sc.conflict[c.base]:
	case ok && (old.count != c.count || old.tiles != c.tiles):
		// Copies of one batch span the same numbers. Two copies that
		// disagree may be a key flipped onto another batch's: the one
		// that starts where the batch before it in its page ends is
		// kept (if both are copies of one batch, a stale one at worst,
		// whose records removed since are delivered again); if that
		// does not tell, both are lost.
		switch {
		case old.tiles && !c.tiles:
		case c.tiles && !old.tiles:
			sc.batches[c.base] = c.batchCopy
		default:
			delete(sc.batches, c.base)
			sc.conflict[c.base] = true
		}
	case !ok || c.live < old.live:
		sc.batches[c.base] = c.batchCopy
	}
}

// dropBeyond leaves out the batches keyed at or beyond next, the damaged
// file's next sequence number, that are out of place: a key with a high
// bit flipped that was in order within its page (so flippedKey kept it)
// but not with the other pages. Such a batch's records' numbers are not
// known: they are lost (and counted), not delivered after later ones. A
// batch beyond next is out of place when keys found elsewhere lie between
// it and the batch before it in its page (in a sound file the two are
// neighbours: numbers only grow, and batches are deleted in order), when
// it is first in its page (nothing tells), or when its key is below
// reserved (the numbers a write delay may have given out to records
// delivered from memory, which it would take again) without starting
// where the batch before it ends (which a key flipped up cannot do: it
// lies beyond its true place, at or after that end). Batches beyond a next
// that is out of date (read from an older copy of the meta bucket) follow
// one another in their pages and are kept, below reserved where they tile;
// so are verified batches, whose numbers are known. next 0 or 1: not
// known, nothing is left out.
func (sc *pageScan) dropBeyond(next, reserved uint64) {
	if next > 1 {
		keys := slices.Sorted(maps.Keys(sc.batches))
		var drop []uint64
		for i := sort.Search(len(keys), func(i int) bool { return keys[i] >= next }); i < len(keys); i++ {
			base := keys[i]
			if sc.batches[base].verified {
				continue
			}
			pred := sc.batches[base].pred
			follows := pred != 0 && i > 0 && keys[i-1] == pred
			tiles := follows && base == pred+uint64(sc.batches[pred].count)
			if !follows || base < reserved && !tiles {
				drop = append(drop, base)
			}
		}
		for _, base := range drop {
			delete(sc.batches, base)
		}
	}
	sc.end = 0
	for base, c := range sc.batches {
		sc.end = max(sc.end, base+uint64(c.count))
	}
}

// pageBatch is a batch found in a leaf page, under its key.
type pageBatch struct {
	base   uint64
	intact bool // its checksum holds: a candidate; else only its key counts
	batchCopy
}

// flippedKey reports whether the key of cs[i], the batches of one leaf
// page in its order, is out of order where its neighbours are not: a
// damaged key. In a batch of version 1 the key is the only record of the
// batch's sequence numbers (the batch's checksum does not cover it), and
// a batch taken under a wrong one would deliver its records out of order.
// Where two keys disagree and nothing tells which is wrong, both are.
// (Batches of version 2 are taken under the number they hold.)
func flippedKey(cs []pageBatch, i int) bool {
	n := len(cs)
	prevOK := i == 0 || cs[i-1].base < cs[i].base
	nextOK := i == n-1 || cs[i].base < cs[i+1].base
	if prevOK && nextOK {
		return false
	}
	switch {
	case i > 0 && i < n-1: // its neighbours agree with each other without it, or one of them is the odd one
		return cs[i-1].base < cs[i+1].base
	case i == 0 && n > 2:
		return cs[1].base < cs[2].base
	case i == n-1 && n > 2:
		return cs[n-3].base < cs[n-2].base
	}
	return true
}

// inlineBucket takes the meta values of a bucket stored inline: its
// header (root page 0, sequence), then a page of its own.
func (sc *pageScan) inlineBucket(v []byte) {
	le := binary.LittleEndian
	if len(v) < 32 || le.Uint64(v) != 0 {
		return
	}
	p := v[16:]
	count := int(le.Uint16(p[10:]))
	for i := range count {
		if 16+i*16+16 > len(p) {
			return
		}
		e := p[16+i*16:]
		flags, pos, ksize, vsize := le.Uint32(e), int(le.Uint32(e[4:])), int(le.Uint32(e[8:])), int(le.Uint32(e[12:]))
		start := 16 + i*16 + pos
		if flags != 0 || pos <= 0 || start+ksize+vsize > len(p) || start+ksize+vsize < start {
			continue
		}
		sc.metaValue(p[start:start+ksize], p[start+ksize:start+ksize+vsize])
	}
}

// metaValue takes a value of the meta bucket found on a page: each
// counter at its highest, the ID as found.
func (sc *pageScan) metaValue(k, v []byte) {
	if string(k) == string(keyID) && len(v) > 0 && len(v) <= 64 {
		sc.meta.id = string(v)
		return
	}
	if string(k) == string(keyClockSteps) && len(v)%16 == 0 {
		// Of the copies found, the one with the latest step (steps only
		// add up; a merge of the oldest two keeps the latest).
		steps, have := decodeSteps(v), sc.meta.steps
		if len(steps) > 0 && (len(have) == 0 || steps[len(steps)-1].at.After(have[len(have)-1].at) ||
			steps[len(steps)-1].at.Equal(have[len(have)-1].at) && len(steps) > len(have)) {
			sc.meta.steps = steps
		}
		return
	}
	if len(v) != 8 {
		return
	}
	for _, fl := range sc.meta.fields() {
		if string(k) == string(fl.k) {
			*fl.v = max(*fl.v, binary.BigEndian.Uint64(v))
		}
	}
}

// each calls fn for every batch found, in key order, from the head on,
// reading each from f again. Of two batches that overlap (one under a
// damaged key, or a layout a crashed or failed commit left in freed
// pages), a verified one is kept over one that is not, and two verified
// ones are both kept (each number is taken once); else the one whose
// other side tiles with its neighbour is kept and the other left out;
// when that does not tell, both are: records lost rather than delivered
// out of order.
func (sc *pageScan) each(f *os.File, fn func(base uint64, v []byte) error) error {
	keys := slices.Sorted(maps.Keys(sc.batches))
	end := func(i int) uint64 { return keys[i] + uint64(sc.batches[keys[i]].count) }
	left := map[uint64]bool{}
	for i := 1; i < len(keys); i++ {
		if end(i-1) <= keys[i] {
			continue
		}
		curTiles := i+1 < len(keys) && end(i) == keys[i+1]
		prevTiles := i >= 2 && end(i-2) == keys[i-1]
		prevVerified, curVerified := sc.batches[keys[i-1]].verified, sc.batches[keys[i]].verified
		switch {
		case prevVerified && curVerified:
			// Both hold their records under their own numbers (a
			// layout a failed commit left, a stale copy): the first
			// takes the numbers they share (see salvager.taken).
		case prevVerified && !curVerified:
			left[keys[i]] = true
		case curVerified && !prevVerified:
			left[keys[i-1]] = true
		case prevTiles && !curTiles:
			left[keys[i]] = true
		case curTiles && !prevTiles:
			left[keys[i-1]] = true
		default:
			left[keys[i-1]], left[keys[i]] = true, true
		}
	}
	var v []byte
	for _, base := range keys {
		if left[base] {
			continue
		}
		c := sc.batches[base]
		v = slices.Grow(v[:0], c.n)[:c.n]
		if _, err := f.ReadAt(v, c.off); err != nil {
			return err
		}
		if err := fn(base, v); err != nil {
			return err
		}
	}
	return nil
}

// salvager writes a new buffer file from the readable parts of an old one.
type salvager struct {
	out    *bolt.DB
	old    state // the old file's counters
	st     state // the new file's counters
	copied int
	aside  uint64 // records set aside as dead letters
	// expect is how many live records the old file held, as far as its
	// counters tell; what is neither copied nor set aside counts as
	// dropped for DropCorrupt.
	expect uint64

	w fileWriter

	runStart uint64   // sequence number of run[0]
	run      [][]byte // contiguous intact records not yet in a batch
	runSize  int
	lastSeq  uint64 // highest sequence number seen in the old file
	// left counts what the old file held that the new one has no copy
	// of: dead-letter entries that did not decode, batches under a
	// damaged key, a quarantine of an old format.
	left int
	// dlCopied is how many dead-lettered records the old file's entries
	// that were copied hold.
	dlCopied uint64
	tree     bool // through bbolt's tree, not page by page
	// continues: a complete salvage carries the lineage over (see
	// ReadOnly.salvage).
	continues bool
	// taken is the lowest sequence number a record may still have:
	// batches come in key order, and a stale copy found page by page
	// can reach past the key of the next batch; a record already taken
	// from one copy is not taken again, so batches never overlap.
	taken uint64
}

// createBuckets creates a buffer's buckets in a new file.
func createBuckets(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketBatches, bucketMeta, bucketDeadLetters} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
}

// fileWriter fills a new buffer file (Salvage, Compact) in write
// transactions of about txSize bytes, so memory stays bounded however
// large the file.
type fileWriter struct {
	out     *bolt.DB
	txSize  int
	pending []put // values not yet written
	size    int
}

type put struct{ bucket, key, value []byte }

// add queues a value, copying key and value (they may live in the old
// file's map), and writes the queue once it is worth a transaction.
func (w *fileWriter) add(bucket, key, value []byte) error {
	w.pending = append(w.pending, put{bucket, append([]byte(nil), key...), append([]byte(nil), value...)})
	w.size += len(key) + len(value)
	if w.size < w.txSize {
		return nil
	}
	return w.flush()
}

// flush writes the queued values in one transaction. Keys come in order,
// so pages are filled, not split in half as bbolt does by default.
func (w *fileWriter) flush() error {
	err := w.out.Update(func(tx *bolt.Tx) error {
		for _, p := range w.pending {
			bk := tx.Bucket(p.bucket)
			bk.FillPercent = 1
			if err := bk.Put(p.key, p.value); err != nil {
				return err
			}
		}
		return nil
	})
	w.pending, w.size = nil, 0
	return err
}

// batch takes one batch of the old file.
func (s *salvager) batch(batches *bolt.Bucket, base uint64, v []byte) error {
	raws, count, perr := parseBatch(base, v)
	for i, raw := range raws {
		seq := base + uint64(i)
		s.lastSeq = max(s.lastSeq, seq)
		if seq < s.old.head || seq < s.taken || len(raw) == 0 {
			continue
		}
		s.taken = seq + 1
		if _, err := decode(raw); err != nil {
			if err := s.setAside(seqKey(seq), &deadEntry{reason: ReasonUndecodable, detail: err.Error(), records: 1, body: raw}); err != nil {
				return err
			}
			continue
		}
		if len(s.run) > 0 && (seq != s.runStart+uint64(len(s.run)) || s.runSize >= maxBatchBytes) {
			if err := s.flushRun(); err != nil {
				return err
			}
		}
		if len(s.run) == 0 {
			s.runStart = seq
		}
		s.run = append(s.run, append([]byte(nil), raw...)) // outlives the transaction if reading fails
		s.runSize += len(raw)
		s.copied++
	}
	if framingBroken(raws, count, perr) {
		first := max(base+uint64(len(raws)), s.old.head)
		end := base + batchSpan(batches, base, count, s.old.next)
		s.lastSeq = max(s.lastSeq, end-1)
		if end > first { // the whole batch, for inspection
			return s.setAside(seqKey(base), &deadEntry{reason: ReasonBrokenBatch, detail: perr.Error(), records: end - first, batch: true, body: v})
		}
	}
	return nil
}

// flushRun turns the run of intact records into a batch.
func (s *salvager) flushRun() error {
	if len(s.run) == 0 {
		return nil
	}
	if s.st.count == 0 {
		s.st.head = s.runStart
	}
	err := s.w.add(bucketBatches, seqKey(s.runStart), appendBatch(make([]byte, 0, batchSize(s.run)), s.runStart, s.run))
	s.st.count += uint64(len(s.run))
	s.st.bytes += uint64(s.runSize)
	s.run, s.runSize = nil, 0
	return err
}

// deadLetter copies an intact dead-letter entry of the old file; it counts
// in what the new file holds, not in its counts by reason, which carry
// over. A damaged entry is left behind (Verify reports it).
func (s *salvager) deadLetter(k, v []byte) error {
	e, err := decodeDeadEntry(v)
	if err != nil || len(k) != 8 {
		s.left++
		return nil
	}
	s.st.dlRecords += e.records
	s.st.dlBytes += uint64(len(v))
	s.dlCopied += e.records
	return s.w.add(bucketDeadLetters, k, v)
}

// setAside makes a dead-letter entry in the new file for damage found in
// the old one, counting it by reason.
func (s *salvager) setAside(key []byte, e *deadEntry) error {
	e.at = time.Now()
	v := appendDeadEntry(nil, e)
	s.st.dlRecords += e.records
	s.st.dlBytes += uint64(len(v))
	s.st.countDead(e.reason, e.records)
	s.aside += e.records
	return s.w.add(bucketDeadLetters, key, v)
}

// complete reports whether the new file holds a copy of everything the
// old one held: every live record (copied, or set aside with its bytes)
// and every dead letter, as the old file's own counters account for
// them, read through bbolt's tree with nothing left behind.
func (s *salvager) complete() bool {
	return s.tree && s.left == 0 && s.expect == uint64(s.copied)+s.aside && s.dlCopied == s.old.dlRecords
}

// finish writes what is left and the counters, and syncs the file.
func (s *salvager) finish() error {
	if err := s.flushRun(); err != nil {
		return err
	}
	if err := s.w.flush(); err != nil {
		return err
	}
	// Above every number the old file gave out, written or not (reserved).
	s.st.next = max(s.old.next, s.old.reserved, s.lastSeq+1, s.st.head+s.st.count)
	if s.st.count == 0 {
		s.st.head = s.st.next
	}
	for r, n := range s.old.deadLettered {
		s.st.countDead(r, n)
	}
	s.st.dropBytes, s.st.dropAge, s.st.dropPurged = s.old.dropBytes, s.old.dropAge, s.old.dropPurged
	s.st.dropDLLimit, s.st.dropDLPurged = s.old.dropDLLimit, s.old.dropDLPurged
	s.st.dropCorrupt = s.old.dropCorrupt
	if got := uint64(s.copied) + s.aside; s.expect > got {
		s.st.dropCorrupt += s.expect - got
	}
	s.st.id = s.old.id
	s.st.steps = s.old.steps // else records received before a clock step look that much older (max_age)
	// A complete copy continues the old file's history; anything else
	// starts another (see pruneAside).
	s.st.lineage = s.old.lineage
	if !s.continues || !s.complete() || s.st.lineage == "" {
		var err error
		if s.st.lineage, err = newID(); err != nil {
			return err
		}
	}
	err := s.out.Update(func(tx *bolt.Tx) error { return s.st.store(tx.Bucket(bucketMeta)) })
	if err != nil {
		return err
	}
	return s.out.Sync()
}
