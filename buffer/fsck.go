package buffer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// checkPages is bbolt's consistency check (tx.Check) done on the file's
// bytes, read with ReadAt rather than through the memory map, and bounds
// checked: a page of garbage is a finding, never a fault or a panic.
// bbolt's own check runs on a goroutine of its own, where neither can be
// recovered, and trusts every offset it reads.
//
// From the meta page in use it walks the tree of every bucket: each page
// lies below the high-water mark, says its own ID, is referenced once,
// is a branch or a leaf and nothing else (bbolt asserts as much on every
// page it reads), and holds elements whose keys and values lie within it; the keys of a
// bucket ascend strictly across its pages too, each page's within the
// range its parent's branch element gives it (as bbolt's own check has
// them since 1.3.7: a key in order within its page but not with the next
// page's misleads every cursor that passes it); the batches and
// dead-letter buckets are keyed by sequence number, and no batch reaches
// into the next. Then the freelist: no
// page freed twice, none both free and in use, none neither (a leak). It
// reads every page of the tree once, which is about the whole file.
//
// A batch whose own first sequence number (version 2) is not its key
// leaves the tree sound but the file damaged: if nothing else is found,
// checkPages returns a *misplacedError (wrapping ErrCorruptFile), after
// which a salvage can still go through the tree (salvageTree).
func checkPages(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	m0, ok0, _ := readMeta(f, 0, 0)
	ps := int64(os.Getpagesize())
	if ok0 {
		ps = int64(m0.pageSize)
	}
	m1, ok1, _ := readMeta(f, ps, 1)
	if !ok0 && !ok1 {
		return fmt.Errorf("%w: no sound meta page", ErrCorruptFile)
	}
	m := m0
	if !ok0 || ok1 && m1.txid > m0.txid {
		m = m1
	}
	if int64(m.pgid)*ps > fi.Size() {
		return fmt.Errorf("%w: the file is %d bytes but its pages reach %d: truncated", ErrCorruptFile, fi.Size(), int64(m.pgid)*ps)
	}
	c := &pageChecker{r: f, ps: ps, hwm: m.pgid, used: make([]bool, m.pgid)}
	c.use(0, 0)
	c.use(1, 0)
	if _, err := c.walk(m.root, nil, false, keyRange{}); err != nil {
		return err
	}
	if m.freelist == ^uint64(0) { // not stored: nothing to compare
		if c.misplaced != nil {
			return c.misplaced
		}
		return nil
	}
	free, err := c.freelist(m.freelist)
	if err != nil {
		return err
	}
	seen := make([]bool, m.pgid)
	for _, id := range free {
		switch {
		case id >= m.pgid:
			return fmt.Errorf("%w: free page %d is beyond the high-water mark %d", ErrCorruptFile, id, m.pgid)
		case seen[id]:
			return fmt.Errorf("%w: page %d is freed twice", ErrCorruptFile, id)
		case c.used[id]:
			return fmt.Errorf("%w: page %d is both free and in use", ErrCorruptFile, id)
		}
		seen[id] = true
	}
	for id := range m.pgid {
		if !c.used[id] && !seen[id] {
			return fmt.Errorf("%w: page %d is neither free nor in use", ErrCorruptFile, id)
		}
	}
	if c.misplaced != nil {
		return c.misplaced
	}
	return nil
}

// misplacedError reports batches of version 2 whose first sequence
// number is not their key (a damaged key, or a damaged base): the first
// found, and how many.
type misplacedError struct {
	key, base uint64
	n         int
}

func (e *misplacedError) Error() string {
	if e.n == 1 {
		return fmt.Sprintf("%v: the batch of the records from %d is under key %d", ErrCorruptFile, e.base, e.key)
	}
	return fmt.Sprintf("%v: %d batches under a key that is not their first sequence number (the first: the records from %d under key %d)", ErrCorruptFile, e.n, e.base, e.key)
}

func (e *misplacedError) Unwrap() error { return ErrCorruptFile }

// pageChecker walks a bbolt file's pages.
type pageChecker struct {
	r    io.ReaderAt
	ps   int64
	hwm  uint64 // the high-water mark: pages below it exist
	used []bool // pages reached from the root
	// batchEnd is the sequence number after the last batch walked, in
	// the batches bucket: the next batch's key may not lie below it.
	batchEnd  uint64
	misplaced *misplacedError // batches whose base is not their key
}

// Page layout (bbolt's): id(8) flags(2) count(2) overflow(4), then the
// elements: a branch element is pos(4) ksize(4) pgid(8), a leaf element
// flags(4) pos(4) ksize(4) vsize(4); pos counts from the element.
const (
	pageHeader     = 16
	elementSize    = 16
	branchPageFlag = 0x01
	leafPageFlag   = 0x02
	freelistFlag   = 0x10
	bucketLeafFlag = 0x01
	bucketHeader   = 16 // an inline bucket's value: root(8) sequence(8), then its page
)

// use marks pages id to id+overflow as reached, once.
func (c *pageChecker) use(id uint64, overflow uint32) error {
	end := id + uint64(overflow)
	if id < 2 && end >= 2 || id >= 2 && (end >= c.hwm || end < id) {
		return fmt.Errorf("%w: page %d (+%d overflow) is out of bounds", ErrCorruptFile, id, overflow)
	}
	for p := id; p <= end; p++ {
		if c.used[p] {
			return fmt.Errorf("%w: page %d is referenced twice", ErrCorruptFile, p)
		}
		c.used[p] = true
	}
	return nil
}

// page reads page id with its overflow pages.
func (c *pageChecker) page(id uint64) ([]byte, error) {
	if id < 2 || id >= c.hwm {
		return nil, fmt.Errorf("%w: page %d is out of bounds", ErrCorruptFile, id)
	}
	p := make([]byte, c.ps)
	if _, err := c.r.ReadAt(p, int64(id)*c.ps); err != nil {
		return nil, fmt.Errorf("%w: page %d: %w", ErrCorruptFile, id, err)
	}
	le := binary.LittleEndian
	if got := le.Uint64(p); got != id {
		return nil, fmt.Errorf("%w: page %d says it is page %d", ErrCorruptFile, id, got)
	}
	overflow := le.Uint32(p[12:])
	if err := c.use(id, overflow); err != nil {
		return nil, err
	}
	if overflow > 0 {
		p = make([]byte, int64(overflow+1)*c.ps)
		if _, err := c.r.ReadAt(p, int64(id)*c.ps); err != nil {
			return nil, fmt.Errorf("%w: page %d: %w", ErrCorruptFile, id, err)
		}
	}
	return p, nil
}

// keyRange is where the keys of a page must lie: after prev, the last
// key of the pages before it in the bucket (nil: none), at or after lo,
// its parent's branch key (nil: none), and before hi, the parent's next
// branch key (nil: none).
type keyRange struct{ prev, lo, hi []byte }

// walk checks the tree whose root is page id and returns its last key.
// name is the bucket's (nil for the root bucket, whose keys name
// buckets); seqKeys requires sequence-number keys; its keys must lie in r.
func (c *pageChecker) walk(id uint64, name []byte, seqKeys bool, r keyRange) ([]byte, error) {
	p, err := c.page(id)
	if err != nil {
		return nil, err
	}
	return c.elements(p, id, name, seqKeys, r)
}

// elements checks the elements of page p (a page of the file, id, or an
// inline bucket's page, id 0), their keys in r, and walks on to the pages
// they reference. It returns the last key of the page's subtree.
func (c *pageChecker) elements(p []byte, id uint64, name []byte, seqKeys bool, r keyRange) ([]byte, error) {
	le := binary.LittleEndian
	if len(p) < pageHeader {
		return nil, fmt.Errorf("%w: page %d is too short", ErrCorruptFile, id)
	}
	flags, count := le.Uint16(p[8:]), int(le.Uint16(p[10:]))
	if flags != branchPageFlag && flags != leafPageFlag { // exactly one type, as bbolt asserts on every page it reads
		return nil, fmt.Errorf("%w: page %d has type %#x, not a branch or a leaf", ErrCorruptFile, id, flags)
	}
	if pageHeader+count*elementSize > len(p) {
		return nil, fmt.Errorf("%w: page %d: %d elements do not fit", ErrCorruptFile, id, count)
	}
	prev := r.prev
	for i := range count {
		off := pageHeader + i*elementSize
		e := p[off : off+elementSize]
		var pos, ksize, vsize int
		if flags == branchPageFlag {
			pos, ksize = int(le.Uint32(e)), int(le.Uint32(e[4:]))
		} else {
			pos, ksize, vsize = int(le.Uint32(e[4:])), int(le.Uint32(e[8:])), int(le.Uint32(e[12:]))
		}
		start := off + pos
		end := start + ksize + vsize
		if pos < 0 || ksize < 0 || vsize < 0 || end > len(p) || end < start {
			return nil, fmt.Errorf("%w: page %d: element %d lies outside the page", ErrCorruptFile, id, i)
		}
		k, v := p[start:start+ksize], p[start+ksize:end]
		switch {
		case prev != nil && bytes.Compare(prev, k) >= 0 && i > 0:
			return nil, fmt.Errorf("%w: page %d: keys out of order at element %d", ErrCorruptFile, id, i)
		case prev != nil && bytes.Compare(prev, k) >= 0,
			r.lo != nil && bytes.Compare(k, r.lo) < 0,
			r.hi != nil && bytes.Compare(k, r.hi) >= 0:
			return nil, fmt.Errorf("%w: page %d: element %d's key is out of order with the keys of the pages beside it", ErrCorruptFile, id, i)
		}
		prev = k
		if flags == branchPageFlag {
			hi := r.hi
			if i+1 < count {
				next := p[off+elementSize:]
				pos, ksize := int(le.Uint32(next)), int(le.Uint32(next[4:]))
				if start := off + elementSize + pos; pos >= 0 && ksize >= 0 && start+ksize <= len(p) && start+ksize >= start {
					hi = p[start : start+ksize]
				}
			}
			last, err := c.walk(le.Uint64(e[8:]), name, seqKeys, keyRange{prev: r.prev, lo: k, hi: hi})
			if err != nil {
				return nil, err
			}
			r.prev = last
			continue
		}
		bucket := le.Uint32(e)&bucketLeafFlag != 0
		if seqKeys && (len(k) != 8 || bucket) {
			return nil, fmt.Errorf("%w: bucket %q holds a key of %d bytes: a damaged page", ErrCorruptFile, name, len(k))
		}
		if seqKeys && string(name) == string(bucketBatches) {
			if err := c.batch(binary.BigEndian.Uint64(k), v); err != nil {
				return nil, fmt.Errorf("%w: page %d: %w", ErrCorruptFile, id, err)
			}
		}
		if !bucket {
			continue
		}
		if len(v) < bucketHeader {
			return nil, fmt.Errorf("%w: page %d: bucket %q has a short header", ErrCorruptFile, id, k)
		}
		sub := string(k) == string(bucketBatches) || string(k) == string(bucketDeadLetters)
		sub = sub && name == nil
		c.batchEnd = 0
		var err error
		if root := le.Uint64(v); root != 0 {
			_, err = c.walk(root, k, sub, keyRange{})
		} else {
			_, err = c.elements(v[bucketHeader:], 0, k, sub, keyRange{})
		}
		if err != nil {
			return nil, err
		}
	}
	if flags == branchPageFlag {
		return r.prev, nil
	}
	return prev, nil
}

// batch checks that the batch v under key base does not reach back into
// the batch before it: a key with a low bit flipped is still in order, but
// two records would have one sequence number. A batch whose header is
// unreadable spans up to the next key (as the reader takes it). A batch
// whose own first sequence number (version 2) is not its key is noted as
// misplaced and left out of that check: its key says nothing of its
// records.
func (c *pageChecker) batch(base uint64, v []byte) error {
	if own, hasBase, _, _, ok := batchHeader(v); ok && hasBase && own != base {
		if c.misplaced == nil {
			c.misplaced = &misplacedError{key: base, base: own}
		}
		c.misplaced.n++
		return nil
	}
	if base < c.batchEnd {
		return fmt.Errorf("the batch keyed %d overlaps the one before it, which ends at %d", base, c.batchEnd-1)
	}
	c.batchEnd = base + 1
	if n, ok := batchCount(v); ok && n > 0 {
		c.batchEnd = base + uint64(n)
	}
	return nil
}

// freelist reads the free page IDs from the freelist page id.
func (c *pageChecker) freelist(id uint64) ([]uint64, error) {
	p, err := c.page(id)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	if le.Uint16(p[8:])&freelistFlag == 0 {
		return nil, fmt.Errorf("%w: freelist page %d is not a freelist", ErrCorruptFile, id)
	}
	n, ids := int(le.Uint16(p[10:])), p[pageHeader:]
	if n == 0xFFFF { // the count does not fit the header: it is the first ID's slot
		if len(ids) < 8 {
			return nil, errors.New("freelist: short page")
		}
		n, ids = int(le.Uint64(ids)), ids[8:]
	}
	if n < 0 || n > len(ids)/8 {
		return nil, fmt.Errorf("%w: freelist page %d: %d IDs do not fit", ErrCorruptFile, id, n)
	}
	free := make([]uint64, n)
	for i := range free {
		free[i] = le.Uint64(ids[8*i:])
	}
	return free, nil
}
