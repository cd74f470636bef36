package buffer

// The dead-letter bucket: records that left the FIFO without being
// delivered, kept with why. A record gets there through DeadLetter (the
// forwarder: the destination rejects it for good) or by the buffer itself
// (a stored record that cannot be decoded, a batch whose framing is
// broken). Entries are kept for inspection, export and replay, bounded by
// Options.MaxDeadLetterBytes, and counted by reason in the meta bucket in
// the same transaction that moves them.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Reason says why a record was dead-lettered, e.g. "message_too_large".
// The buffer stores and counts it; callers define their reasons as
// constants of this type.
type Reason string

// The buffer's own reasons.
const (
	// ReasonUndecodable: a stored record that cannot be decoded (its
	// checksum or encoding is damaged).
	ReasonUndecodable Reason = "undecodable"
	// ReasonBrokenBatch: a stored batch whose framing is broken, so its
	// records cannot be told apart; the entry holds the whole batch as
	// stored, under its first sequence number, and counts every live
	// record in its range.
	ReasonBrokenBatch Reason = "broken_batch"
)

// reasonUnspecified stands for an empty reason (a bbolt key cannot be
// empty).
const reasonUnspecified Reason = "unspecified"

// maxDetail is the most of a dead letter's detail text kept.
const maxDetail = 1024

var (
	bucketDeadLetters  = []byte("dead_letters")
	bucketDeadLettered = []byte("dead_lettered") // in meta: reason -> records dead-lettered, ever
	keyID              = []byte("id")
)

// DeadLetter moves record seq out of the FIFO into the dead-letter bucket,
// with its reason and detail (the error text; nil for none). It returns at
// once; the move is written with the next commit, and before any Release
// queued after it, so DeadLetter(seq) followed by Release(n) with n >= seq
// never loses the record. A record released or dropped before the commit
// is not moved. Asking twice for one record keeps the first request. An
// empty reason is kept as "unspecified"; detail is cut at 1 KiB.
func (b *Buffer) DeadLetter(seq uint64, reason Reason, detail error) {
	d := ""
	if detail != nil {
		d = detail.Error()
	}
	if len(d) > maxDetail {
		d = strings.ToValidUTF8(d[:maxDetail], "") + " ..."
	}
	if reason == "" {
		reason = reasonUnspecified
	}
	b.mu.Lock()
	if _, ok := b.toDead[seq]; !ok {
		b.toDead[seq] = deadReq{reason: reason, detail: d, at: b.opts.Now()}
	}
	b.mu.Unlock()
	b.log.Error("buffer: record dead-lettered", "path", b.path, "seq", seq, "reason", reason, "detail", d)
	b.signal()
}

// ID identifies this buffer's log for the life of the gateway: 16 random
// hex digits, created with the file and kept in its meta bucket, preserved
// by compaction and salvage (the same log, the same sequence numbers), new
// for a new file (after a damaged one is moved aside, say). (ID, Seq) is
// unique forever.
func (b *Buffer) ID() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.st.id
}

// newID returns 16 random hex digits.
func newID() (string, error) {
	var p [8]byte
	if _, err := rand.Read(p[:]); err != nil {
		return "", fmt.Errorf("buffer id: %w", err)
	}
	return hex.EncodeToString(p[:]), nil
}

// deadReq is a DeadLetter request not yet written.
type deadReq struct {
	reason Reason
	detail string
	at     time.Time
}

// Dead-letter entry, the value under the record's sequence number (a broken
// batch: its first one). All lengths are uvarints.
//
//	magic(1)=0xDE version(1)=1 flags(1) dead_lettered_at_unix_nano(varint)
//	records(uvarint) reason detail
//	body: the encoded record as stored; with flagWholeBatch, the raw batch
//	crc32c(4, big endian) of everything before it
const (
	deadMagic      = 0xDE
	deadV1         = 1
	flagWholeBatch = 1 << 0
)

// deadEntry is a decoded dead-letter entry; body points into the value.
type deadEntry struct {
	reason  Reason
	detail  string
	at      time.Time
	records uint64 // records it accounts for: 1, or a broken batch's live ones
	batch   bool   // body is a whole broken batch
	body    []byte
}

func appendDeadEntry(dst []byte, e *deadEntry) []byte {
	start := len(dst)
	var flags byte
	if e.batch {
		flags |= flagWholeBatch
	}
	dst = append(dst, deadMagic, deadV1, flags)
	dst = binary.AppendVarint(dst, e.at.UnixNano())
	dst = binary.AppendUvarint(dst, e.records)
	dst = appendBytes(dst, []byte(e.reason))
	dst = appendBytes(dst, []byte(e.detail))
	dst = append(dst, e.body...)
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// decodeDeadEntry parses a dead-letter entry. body points into v.
func decodeDeadEntry(v []byte) (deadEntry, error) {
	var e deadEntry
	if len(v) < 3+1+1+1+1+4 {
		return e, fmt.Errorf("%w: dead-letter entry of %d bytes is too short", ErrCorrupt, len(v))
	}
	if v[0] != deadMagic || v[1] != deadV1 {
		return e, fmt.Errorf("%w: dead-letter header %x is not a version 1 entry", ErrCorrupt, v[:2])
	}
	body, sum := v[:len(v)-4], binary.BigEndian.Uint32(v[len(v)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return e, fmt.Errorf("%w: dead-letter entry checksum %08x, want %08x", ErrCorrupt, got, sum)
	}
	if body[2]&^flagWholeBatch != 0 {
		return e, fmt.Errorf("%w: dead-letter entry flags %02x unknown", ErrCorrupt, body[2])
	}
	e.batch = body[2]&flagWholeBatch != 0
	d := decoder{buf: body[3:]}
	e.at = time.Unix(0, d.varint())
	e.records = d.uvarint()
	e.reason = Reason(d.bytes())
	e.detail = string(d.bytes())
	if d.err != nil {
		return deadEntry{}, fmt.Errorf("dead-letter entry: %w", d.err)
	}
	e.body = d.buf
	return e, nil
}

// putDeadLetter stores e under key and adds it to what the bucket holds;
// the caller counts it by reason.
func putDeadLetter(tx *bolt.Tx, st *state, key []byte, e *deadEntry) error {
	dl := tx.Bucket(bucketDeadLetters)
	if old := dl.Get(key); old != nil { // replaced: uncount what it held
		if oe, err := decodeDeadEntry(old); err == nil {
			st.dlRecords -= min(st.dlRecords, oe.records)
		}
		st.dlBytes -= min(st.dlBytes, uint64(len(old)))
	}
	v := appendDeadEntry(make([]byte, 0, 32+len(e.reason)+len(e.detail)+len(e.body)), e)
	dl.FillPercent = 0.95 // keys mostly come in order: pack pages
	if err := dl.Put(append([]byte(nil), key...), v); err != nil {
		return err
	}
	st.dlRecords += e.records
	st.dlBytes += uint64(len(v))
	return nil
}

// deadLetterBatch copies a batch whose framing is broken, as it is, to the
// dead-letter bucket under its key and counts its live records as
// dead-lettered: those it could frame, and the rest of its sequence range.
// The caller deletes the batch.
func deadLetterBatch(tx *bolt.Tx, st *state, k, v []byte, recs [][]byte, perr error, at time.Time) error {
	base := binary.BigEndian.Uint64(k)
	// Its range: up to the next batch, or as many as its header says if
	// fewer (the next key may lie beyond a gap, a past run's unused
	// reservation). Counted short, the count stays above what is left,
	// and comes back to 0 when the FIFO is empty (dropWhile); counted
	// long, it would reach 0 with records left.
	end := batchEnd(tx.Bucket(bucketBatches), base, st.next)
	if n, ok := batchCount(v); ok && n > 0 {
		end = min(end, base+uint64(n))
	}
	live := end - min(end, max(base, st.head))
	for i, raw := range recs {
		if seq := base + uint64(i); seq < st.head || seq >= end {
			continue
		}
		if len(raw) == 0 {
			live-- // removed before (within the range, so live > 0)
		} else {
			st.bytes -= min(st.bytes, uint64(len(raw)))
		}
	}
	st.count -= min(st.count, live)
	detail := ""
	if perr != nil {
		detail = perr.Error()
	}
	st.countDead(ReasonBrokenBatch, live)
	return putDeadLetter(tx, st, k, &deadEntry{reason: ReasonBrokenBatch, detail: detail, at: at, records: live, batch: true, body: v})
}

// deadLetterTx moves record seq to the dead-letter bucket, leaving a
// removed entry in its batch. If the batch's framing is broken, the whole
// batch is moved (ReasonBrokenBatch): its unreadable records are counted
// too.
func deadLetterTx(tx *bolt.Tx, st *state, seq uint64, r deadReq) error {
	if seq < st.head {
		return nil // released meanwhile
	}
	batches := tx.Bucket(bucketBatches)
	k, v := seekBatch(batches.Cursor(), seq)
	if k == nil {
		return nil
	}
	base := binary.BigEndian.Uint64(k)
	recs, count, perr := parseBatch(base, v)
	if misplaced(perr) {
		return perr // damage in the file, not a batch to set aside
	}
	if framingBroken(recs, count, perr) {
		if seq < base {
			return nil
		}
		if err := deadLetterBatch(tx, st, k, v, recs, perr, r.at); err != nil {
			return err
		}
		if base <= st.head { // it was the head batch: the head moves past it
			st.head = batchEnd(batches, base, st.next)
		}
		return batches.Delete(k)
	}
	if seq < base || seq >= base+uint64(count) || len(recs[seq-base]) == 0 {
		return nil // not there, or already removed
	}
	i := seq - base
	raw := recs[i]
	if err := putDeadLetter(tx, st, seqKey(seq), &deadEntry{reason: r.reason, detail: r.detail, at: r.at, records: 1, body: raw}); err != nil {
		return err
	}
	st.countDead(r.reason, 1)
	st.count--
	st.bytes -= uint64(len(raw))
	kept := make([][]byte, len(recs))
	copy(kept, recs)
	kept[i] = nil
	return batches.Put(append([]byte(nil), k...), appendBatch(make([]byte, 0, batchSize(kept)), base, kept))
}

// countDead adds n records to reason's counter.
func (s *state) countDead(reason Reason, n uint64) {
	if s.deadLettered == nil {
		s.deadLettered = map[Reason]uint64{}
	}
	s.deadLettered[reason] += n
}

// DeadLetterFilter selects dead-letter entries. The zero value selects all
// of them; each field set narrows the selection.
type DeadLetterFilter struct {
	Reason Reason // only entries with this reason
	Seq    uint64 // only the entry under this sequence number
}

func (f DeadLetterFilter) match(seq uint64, e *deadEntry) bool {
	return (f.Seq == 0 || f.Seq == seq) && (f.Reason == "" || f.Reason == e.reason)
}

// DeadLetterEntry is one entry of the dead-letter bucket.
type DeadLetterEntry struct {
	// Seq is the record's sequence number in the FIFO it left; for a
	// broken batch, the batch's first.
	Seq            uint64
	Reason         Reason
	Detail         string // the error text given with the reason
	DeadLetteredAt time.Time
	// Records is how many records the entry accounts for: 1, or the live
	// records in a broken batch's range.
	Records uint64
	// Size is the entry's stored size, what MaxDeadLetterBytes bounds.
	Size int
	// Record is the record, with Seq set; nil when the stored bytes cannot
	// be decoded (ReasonUndecodable, ReasonBrokenBatch). Then Raw holds
	// them as stored (an encoded record, or a whole batch) and Err says
	// why.
	Record *Record
	Raw    []byte
	Err    string
}

// entry turns a stored entry into its public form, copying what it keeps.
func (e *deadEntry) entry(seq uint64, size int) DeadLetterEntry {
	d := DeadLetterEntry{Seq: seq, Reason: e.reason, Detail: e.detail, DeadLetteredAt: e.at, Records: e.records, Size: size}
	if e.batch {
		d.Raw, d.Err = append([]byte(nil), e.body...), "a whole batch whose framing or numbering is broken"
		return d
	}
	r, err := decode(e.body)
	if err != nil {
		d.Raw, d.Err = append([]byte(nil), e.body...), err.Error()
		return d
	}
	r.Seq = seq
	d.Record = &r
	return d
}

// EachDeadLetter calls fn with every dead-letter entry f selects, in
// sequence order, outside any transaction, and stops at the first error fn
// returns, which it returns. It reads in short read transactions beside the
// committer. damaged counts entries whose own header or checksum is
// damaged, which are not passed to fn (Verify names them).
func (b *Buffer) EachDeadLetter(f DeadLetterFilter, fn func(DeadLetterEntry) error) (damaged uint64, err error) {
	return b.view().eachDeadLetter(f, fn)
}

// EachDeadLetter is Buffer.EachDeadLetter for a file at rest.
func (r *ReadOnly) EachDeadLetter(f DeadLetterFilter, fn func(DeadLetterEntry) error) (damaged uint64, err error) {
	return r.v.eachDeadLetter(f, fn)
}

func (v fileView) eachDeadLetter(f DeadLetterFilter, fn func(DeadLetterEntry) error) (damaged uint64, err error) {
	var after []byte // key of the last entry visited
	for {
		var got []DeadLetterEntry
		done := false
		err := v.viewTx(func(tx *bolt.Tx) error {
			dl := tx.Bucket(bucketDeadLetters)
			if dl == nil {
				done = true
				return nil
			}
			c := dl.Cursor()
			k, val := c.First()
			switch {
			case f.Seq != 0 && after == nil:
				k, val = c.Seek(seqKey(f.Seq))
			case after != nil:
				if k, val = c.Seek(after); k != nil && string(k) == string(after) {
					k, val = c.Next()
				}
			}
			for ; k != nil && len(got) < scanChunk; k, val = c.Next() {
				after = append(after[:0], k...)
				if len(k) != 8 {
					damaged++
					continue
				}
				seq := binary.BigEndian.Uint64(k)
				if f.Seq != 0 && seq != f.Seq {
					k = nil
					break
				}
				e, err := decodeDeadEntry(val)
				if err != nil {
					if f.Reason == "" {
						damaged++
					}
					continue
				}
				if f.match(seq, &e) {
					got = append(got, e.entry(seq, len(val)))
				}
			}
			done = k == nil
			return nil
		})
		if err != nil {
			return damaged, fmt.Errorf("read dead letters of buffer %s: %w", v.path, err)
		}
		for _, e := range got {
			if err := fn(e); err != nil {
				if errors.Is(err, errStop) {
					return damaged, nil
				}
				return damaged, err
			}
		}
		if done {
			return damaged, nil
		}
	}
}

// ReplayResult is what a replay of dead letters did.
type ReplayResult struct {
	// Replayed is how many records went back into the FIFO, with the new
	// sequence numbers FirstSeq to LastSeq (0 when none).
	Replayed uint64 `json:"replayed"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	// Kept is how many selected entries stayed in the bucket because their
	// record cannot be decoded (ReasonUndecodable, ReasonBrokenBatch, a
	// damaged entry): there is nothing to deliver.
	Kept uint64 `json:"kept"`
}

// ReplayDeadLetters moves the dead-letter entries f selects back into the
// FIFO, as new records at the tail: new sequence numbers, after every
// record already buffered, each with its original receive time, topic,
// payload and properties. They leave the bucket in the same transaction,
// written by the committer with the next commit; it returns once that
// commit is durable, or with ctx's error (the replay may still happen).
// The records count as appended: MaxBytes and MaxAge apply to them (with
// DropOldest the oldest records make room; with Block a replay may take
// the buffer over MaxBytes until releases bring it back; a record older
// than MaxAge is dropped again at once). Fix what made them fail first, or
// they come back.
func (b *Buffer) ReplayDeadLetters(ctx context.Context, f DeadLetterFilter) (ReplayResult, error) {
	var res ReplayResult
	err := b.deadLetterOp(ctx, func(tx *bolt.Tx, st *state) (err error) {
		res, err = replayTx(tx, st, f)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("replay dead letters of buffer %s: %w", b.path, err)
	}
	return res, nil
}

// PurgeDeadLetters deletes the dead-letter entries f selects (with a zero
// filter, damaged entries too) and counts their records as dropped for
// DropDeadLetterPurged. It is written by the committer with the next
// commit; it returns once that commit is durable, or with ctx's error (the
// purge may still happen). It returns how many records it removed.
func (b *Buffer) PurgeDeadLetters(ctx context.Context, f DeadLetterFilter) (uint64, error) {
	var n uint64
	err := b.deadLetterOp(ctx, func(tx *bolt.Tx, st *state) (err error) {
		n, err = purgeDeadTx(tx, st, f)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("purge dead letters of buffer %s: %w", b.path, err)
	}
	return n, nil
}

// ReplayDeadLetters is Buffer.ReplayDeadLetters on the file at path while
// no ferry runs on it: it needs the file to itself and fails with
// ErrLocked while another process holds it.
func ReplayDeadLetters(path string, f DeadLetterFilter) (ReplayResult, error) {
	var res ReplayResult
	err := offlineUpdate("replay dead letters of buffer", path, func(tx *bolt.Tx, st *state) (err error) {
		// Numbers up to the reservation may have gone to records
		// delivered from memory, never written: start above them.
		st.next = max(st.next, st.reserved)
		res, err = replayTx(tx, st, f)
		return err
	})
	return res, err
}

// PurgeDeadLetters is Buffer.PurgeDeadLetters on the file at path while no
// ferry runs on it: it needs the file to itself and fails with ErrLocked
// while another process holds it.
func PurgeDeadLetters(path string, f DeadLetterFilter) (uint64, error) {
	var n uint64
	err := offlineUpdate("purge dead letters of buffer", path, func(tx *bolt.Tx, st *state) (err error) {
		n, err = purgeDeadTx(tx, st, f)
		return err
	})
	return n, err
}

// offlineUpdate runs fn in one write transaction on the file at path,
// opened exclusively, and stores the counters fn changed.
func offlineUpdate(op, path string, fn func(tx *bolt.Tx, st *state) error) error {
	db, err := openExclusive(op, path)
	if err != nil {
		return err
	}
	defer db.Close()
	err = guard(func() error {
		return db.Update(func(tx *bolt.Tx) error {
			st, _, err := readState(tx)
			if err != nil {
				return err
			}
			if err := migrateQuarantine(tx, &st, time.Now()); err != nil {
				return err
			}
			if err := fn(tx, &st); err != nil {
				return err
			}
			return st.store(tx.Bucket(bucketMeta))
		})
	})
	if err == nil {
		err = db.Close()
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, path, err)
	}
	return nil
}

// deadOp is a dead-letter operation for the committer to run inside its
// next write transaction; with a nil fn, a flush barrier (see flush).
type deadOp struct {
	fn   func(tx *bolt.Tx, st *state) error
	done chan error // buffered; gets the commit's outcome
}

// deadLetterOp has the committer run fn (if not nil) in its next
// transaction, which writes the tail, and waits for the commit.
func (b *Buffer) deadLetterOp(ctx context.Context, fn func(tx *bolt.Tx, st *state) error) error {
	op := deadOp{fn: fn, done: make(chan error, 1)}
	b.closeMu.RLock()
	if b.closed {
		b.closeMu.RUnlock()
		return ErrClosed
	}
	b.mu.Lock()
	b.deadOps = append(b.deadOps, op)
	b.mu.Unlock()
	b.closeMu.RUnlock()
	b.signal()
	select {
	case err := <-op.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// replayTx moves the selected entries whose record can be decoded back
// into the FIFO at st.next, in batches of about maxBatchBytes.
func replayTx(tx *bolt.Tx, st *state, f DeadLetterFilter) (ReplayResult, error) {
	var res ReplayResult
	dl := tx.Bucket(bucketDeadLetters)
	var keys [][]byte
	var recs [][]byte
	var gone uint64 // entry bytes
	err := selectDead(dl, f, func(k, v []byte, e *deadEntry, err error) error {
		if err != nil || e.batch {
			res.Kept++
			return nil
		}
		if _, err := decode(e.body); err != nil {
			res.Kept++
			return nil
		}
		keys = append(keys, k)
		recs = append(recs, append([]byte(nil), e.body...))
		gone += uint64(len(v))
		return nil
	})
	if err != nil {
		return res, err
	}
	for _, k := range keys {
		if err := dl.Delete(k); err != nil {
			return res, err
		}
	}
	st.dlRecords -= min(st.dlRecords, uint64(len(keys)))
	st.dlBytes -= min(st.dlBytes, gone)
	if len(recs) == 0 {
		return res, nil
	}
	res.Replayed, res.FirstSeq = uint64(len(recs)), st.next
	batches := tx.Bucket(bucketBatches)
	for len(recs) > 0 {
		n, size := 0, 0
		for n < len(recs) && (n == 0 || size < maxBatchBytes) {
			size += len(recs[n])
			n++
		}
		if err := batches.Put(seqKey(st.next), appendBatch(make([]byte, 0, batchSize(recs[:n])), st.next, recs[:n])); err != nil {
			return res, err
		}
		st.next += uint64(n)
		st.count += uint64(n)
		st.bytes += uint64(size)
		recs = recs[n:]
	}
	res.LastSeq = st.next - 1
	return res, nil
}

// purgeDeadTx deletes the selected entries, counting their records as
// dropped for DropDeadLetterPurged.
func purgeDeadTx(tx *bolt.Tx, st *state, f DeadLetterFilter) (uint64, error) {
	dl := tx.Bucket(bucketDeadLetters)
	var keys [][]byte
	var records, size uint64
	err := selectDead(dl, f, func(k, v []byte, e *deadEntry, err error) error {
		n := uint64(1) // a damaged entry: its count is unknown
		if err == nil {
			n = e.records
		}
		keys = append(keys, k)
		records += n
		size += uint64(len(v))
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range keys {
		if err := dl.Delete(k); err != nil {
			return 0, err
		}
	}
	st.dlRecords -= min(st.dlRecords, records)
	st.dlBytes -= min(st.dlBytes, size)
	st.dropDLPurged += records
	return records, nil
}

// selectDead calls fn with every entry f selects, in key order; keys are
// copied. A damaged entry (err set, e zero) is selected only by a filter
// without a reason.
func selectDead(dl *bolt.Bucket, f DeadLetterFilter, fn func(k, v []byte, e *deadEntry, err error) error) error {
	c := dl.Cursor()
	k, v := c.First()
	if f.Seq != 0 {
		k, v = c.Seek(seqKey(f.Seq))
	}
	for ; k != nil; k, v = c.Next() {
		seq := uint64(0)
		if len(k) == 8 {
			seq = binary.BigEndian.Uint64(k)
		}
		if f.Seq != 0 && seq != f.Seq {
			return nil
		}
		e, err := decodeDeadEntry(v)
		if err != nil && f.Reason != "" || err == nil && !f.match(seq, &e) {
			continue
		}
		if err := fn(append([]byte(nil), k...), v, &e, err); err != nil {
			return err
		}
	}
	return nil
}

// dlPages follows the pages the dead-letter bucket takes, which MaxBytes
// leaves out. Measuring them visits every page of the bucket, so the
// committer measures at the start of a commit after one that changed the
// bucket (inside the commit that changes it, bbolt has not laid the pages
// out yet), but not more than once a second unless the entries' stored
// bytes changed by more than an eighth (and 1 MiB) since; in between, the
// change in stored bytes stands for the change in pages. A stream of bad
// records costs a walk of the bucket a second, not one a commit.
type dlPages struct {
	measured uint64    // bytes of the bucket's pages when measured
	atBytes  uint64    // the entries' stored bytes then
	at       time.Time // when
	stale    bool      // the bucket changed since
}

// measure measures the pages at the start of a write transaction, if they
// changed and the last measurement is a second old; st is the state the
// last commit left.
func (p *dlPages) measure(tx *bolt.Tx, st state, now time.Time) {
	change := max(st.dlBytes, p.atBytes) - min(st.dlBytes, p.atBytes)
	if !p.stale || now.Sub(p.at) < time.Second && change <= max(1<<20, p.atBytes/8) {
		return
	}
	*p = dlPages{measured: deadLetterDisk(tx), atBytes: st.dlBytes, at: now}
}

// estimate is the bytes of the bucket's pages for st.
func (p *dlPages) estimate(st state) uint64 {
	if st.dlBytes >= p.atBytes {
		return p.measured + st.dlBytes - p.atBytes
	}
	return p.measured - min(p.measured, p.atBytes-st.dlBytes)
}

// deadLetterDisk is the bytes of the pages the dead-letter bucket takes. In
// a write transaction it sees the pages as the last commit left them.
func deadLetterDisk(tx *bolt.Tx) uint64 {
	dl := tx.Bucket(bucketDeadLetters)
	if dl == nil {
		return 0
	}
	s := dl.Stats()
	return uint64(s.BranchAlloc + s.LeafAlloc)
}

// legacyEntry is the dead-letter entry for value v of the old quarantine
// bucket: a single record (ReasonUndecodable) or a whole batch
// (ReasonBrokenBatch, its first byte is a batch's magic).
func legacyEntry(v []byte, now time.Time) deadEntry {
	const detail = "moved from the quarantine bucket of an older ferry, which kept no reason"
	e := deadEntry{reason: ReasonUndecodable, detail: detail, at: now, records: 1, body: v}
	if len(v) > 0 && v[0] == batchMagic {
		e.reason, e.batch = ReasonBrokenBatch, true
		if n, ok := batchCount(v); ok && n > 0 {
			e.records = uint64(n)
		}
	}
	return e
}

// limitDeadLetters deletes the oldest entries (lowest sequence numbers)
// until the bucket holds at most limit bytes, and returns how many records
// they held; they count as dropped for DropDeadLetterLimit.
func limitDeadLetters(tx *bolt.Tx, st *state, limit uint64) (uint64, error) {
	if st.dlBytes <= limit {
		return 0, nil
	}
	dl := tx.Bucket(bucketDeadLetters)
	c := dl.Cursor()
	var keys [][]byte
	var records uint64
	for k, v := c.First(); k != nil && st.dlBytes > limit; k, v = c.Next() {
		n := uint64(1)
		if e, err := decodeDeadEntry(v); err == nil {
			n = e.records
		}
		keys = append(keys, append([]byte(nil), k...))
		records += n
		st.dlRecords -= min(st.dlRecords, n)
		st.dlBytes -= min(st.dlBytes, uint64(len(v)))
	}
	for _, k := range keys {
		if err := dl.Delete(k); err != nil {
			return 0, err
		}
	}
	if k, _ := dl.Cursor().First(); k == nil { // counters that drifted: nothing is left
		st.dlRecords, st.dlBytes = 0, 0
	}
	st.dropDLLimit += records
	return records, nil
}

// migrateQuarantine turns the quarantine bucket of a file written before
// the dead-letter bucket existed into dead-letter entries, and deletes it.
// A single record becomes ReasonUndecodable, a whole batch (its first byte
// is a batch's magic) ReasonBrokenBatch. The old file counted both in one
// total: the records of broken batches are that total less the single
// records.
func migrateQuarantine(tx *bolt.Tx, st *state, now time.Time) error {
	if _, err := tx.CreateBucketIfNotExists(bucketDeadLetters); err != nil {
		return err
	}
	q := tx.Bucket(bucketQuarantine)
	if q == nil {
		return nil
	}
	err := convertQuarantine(tx, st, now, func(k []byte, e *deadEntry) error { return putDeadLetter(tx, st, k, e) })
	if err != nil {
		return err
	}
	if err := tx.DeleteBucket(bucketQuarantine); err != nil {
		return err
	}
	return tx.Bucket(bucketMeta).Delete(keyQuarantined)
}

// convertQuarantine calls put with the dead-letter entry for every entry
// of tx's old quarantine bucket, if it has one, and counts them by reason
// in st; put adds them to what the bucket holds. Open, Compact and Salvage
// read files written before the dead-letter bucket with it.
func convertQuarantine(tx *bolt.Tx, st *state, now time.Time, put func(k []byte, e *deadEntry) error) error {
	q := tx.Bucket(bucketQuarantine)
	if q == nil {
		return nil
	}
	var total uint64
	if meta := tx.Bucket(bucketMeta); meta != nil {
		total = getUint(meta, keyQuarantined)
	}
	var singles uint64
	err := q.ForEach(func(k, v []byte) error {
		e := legacyEntry(v, now)
		if !e.batch {
			singles++
		}
		return put(k, &e)
	})
	if err != nil {
		return err
	}
	st.countDead(ReasonUndecodable, min(singles, total))
	if total > singles {
		st.countDead(ReasonBrokenBatch, total-singles)
	}
	return nil
}

// deadLetters checks every dead-letter entry and, when full, the
// dead-letter counters against them: what the bucket holds, and by reason
// no more than was ever dead-lettered. It reads the bucket in the
// transaction it is given: the bucket is bounded (MaxDeadLetterBytes).
func (vf *verifier) deadLetters(tx *bolt.Tx, full bool) {
	dl := tx.Bucket(bucketDeadLetters)
	if dl == nil {
		if tx.Bucket(bucketQuarantine) == nil {
			vf.rep.problem("the dead-letter bucket is missing")
		}
		return // a file from before it: Open moves the quarantine there
	}
	var records, size uint64
	held := map[Reason]uint64{}
	dl.ForEach(func(k, v []byte) error {
		vf.rep.DeadLetters++
		size += uint64(len(v))
		e, err := decodeDeadEntry(v)
		if err != nil || len(k) != 8 {
			vf.rep.problem("dead-letter entry %x: %v", k, err)
			return nil
		}
		if !e.batch {
			if _, err := decode(e.body); err != nil && e.reason != ReasonUndecodable {
				vf.rep.problem("dead-letter entry %d (%s): record: %v", binary.BigEndian.Uint64(k), e.reason, err)
			}
		}
		records += e.records
		held[e.reason] += e.records
		return nil
	})
	if !full {
		return
	}
	st := vf.st
	if records != st.dlRecords || size != st.dlBytes {
		vf.rep.problem("meta counts %d dead-letter records of %d bytes; the bucket holds %d of %d bytes",
			st.dlRecords, st.dlBytes, records, size)
	}
	for r, n := range held {
		if n > st.deadLettered[r] {
			vf.rep.problem("the dead-letter bucket holds %d records for reason %q; meta counts %d ever dead-lettered", n, r, st.deadLettered[r])
		}
	}
}

// JSONDeadLetter is a dead-letter entry in ferry's export format, one JSON
// object per line: the entry's own fields, then, when its record can be
// decoded, the record's fields as in JSONRecord (seq is the record's
// original sequence number); otherwise raw_base64 and error.
//
//	seq               the record's sequence number (a broken batch: its first)
//	reason            why it was dead-lettered, e.g. "message_too_large"
//	detail            the error text given with the reason, when there is one
//	dead_lettered_at  RFC 3339 time with nanoseconds, UTC
//	records           records the entry accounts for: 1, or a broken batch's
//	size              the entry's stored bytes (what max_dead_letter_bytes bounds)
//	topic ... user_properties   the record, as in JSONRecord
//	raw_base64, error the stored bytes and why they cannot be decoded
type JSONDeadLetter struct {
	Seq            uint64    `json:"seq"`
	Reason         Reason    `json:"reason"`
	Detail         string    `json:"detail,omitempty"`
	DeadLetteredAt time.Time `json:"dead_lettered_at"`
	Records        uint64    `json:"records"`
	Size           int       `json:"size"`
	*JSONRecord
	Raw []byte `json:"raw_base64,omitempty"`
	Err string `json:"error,omitempty"`
}

// NewJSONDeadLetter converts e to its export form.
func NewJSONDeadLetter(e DeadLetterEntry) JSONDeadLetter {
	j := JSONDeadLetter{Seq: e.Seq, Reason: e.Reason, Detail: e.Detail, DeadLetteredAt: e.DeadLetteredAt.UTC(),
		Records: e.Records, Size: e.Size, Raw: e.Raw, Err: e.Err}
	if e.Record != nil {
		r := NewJSONRecord(*e.Record)
		j.JSONRecord = &r
	}
	return j
}

// Entry converts j back into a dead-letter entry.
func (j JSONDeadLetter) Entry() (DeadLetterEntry, error) {
	e := DeadLetterEntry{Seq: j.Seq, Reason: j.Reason, Detail: j.Detail, DeadLetteredAt: j.DeadLetteredAt,
		Records: j.Records, Size: j.Size, Raw: j.Raw, Err: j.Err}
	if j.JSONRecord != nil {
		j.JSONRecord.Seq = j.Seq
		r, err := j.JSONRecord.Record()
		if err != nil {
			return e, fmt.Errorf("dead letter %d: %w", j.Seq, err)
		}
		e.Record = &r
	}
	return e, nil
}

// WriteDeadLetterJSON writes e to w as one line of the export format (see
// JSONDeadLetter).
func WriteDeadLetterJSON(w io.Writer, e DeadLetterEntry) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(NewJSONDeadLetter(e))
}
