package buffer

// The dead-letter bucket: records that left the FIFO without being
// delivered, kept with why. A record gets there through DeadLetter (the
// forwarder: the destination rejects it for good) or by the buffer itself
// (a stored record that cannot be decoded, a batch whose framing is
// broken). Entries are kept for inspection, export and replay, bounded by
// Options.MaxDeadLetterBytes, and counted by reason in the meta bucket in
// the same transaction that moves them.

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
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
// is not moved. Asking twice for one record keeps the first request.
func (b *Buffer) DeadLetter(seq uint64, reason Reason, detail error) {
	d := ""
	if detail != nil {
		d = detail.Error()
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

// putDeadLetter stores e under key and counts it.
func putDeadLetter(tx *bolt.Tx, st *state, key []byte, e *deadEntry) error {
	dl := tx.Bucket(bucketDeadLetters)
	if old := dl.Get(key); old != nil { // replaced: uncount what it held
		if oe, err := decodeDeadEntry(old); err == nil {
			st.dlRecords -= min(st.dlRecords, oe.records)
		}
		st.dlBytes -= min(st.dlBytes, uint64(len(old)))
	}
	v := appendDeadEntry(make([]byte, 0, 32+len(e.reason)+len(e.detail)+len(e.body)), e)
	if err := dl.Put(append([]byte(nil), key...), v); err != nil {
		return err
	}
	st.dlRecords += e.records
	st.dlBytes += uint64(len(v))
	st.countDead(e.reason, e.records)
	return nil
}

// deadLetterBatch copies a batch whose framing is broken, as it is, to the
// dead-letter bucket under its key and counts its live records as
// dead-lettered: those it could frame, and the rest of its sequence range.
// The caller deletes the batch.
func deadLetterBatch(tx *bolt.Tx, st *state, k, v []byte, recs [][]byte, perr error, at time.Time) error {
	base := binary.BigEndian.Uint64(k)
	live := batchEnd(tx.Bucket(bucketBatches), base, st.next) - max(base, st.head)
	for i, raw := range recs {
		if base+uint64(i) < st.head {
			continue
		}
		if len(raw) == 0 {
			live-- // removed before
		} else {
			st.bytes -= min(st.bytes, uint64(len(raw)))
		}
	}
	st.count -= min(st.count, live)
	detail := ""
	if perr != nil {
		detail = perr.Error()
	}
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
	recs, count, perr := parseBatch(v)
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
	st.count--
	st.bytes -= uint64(len(raw))
	kept := make([][]byte, len(recs))
	copy(kept, recs)
	kept[i] = nil
	return batches.Put(append([]byte(nil), k...), appendBatch(make([]byte, 0, batchSize(kept)), kept))
}

// countDead adds n records to reason's counter.
func (s *state) countDead(reason Reason, n uint64) {
	if s.deadLettered == nil {
		s.deadLettered = map[Reason]uint64{}
	}
	s.deadLettered[reason] += n
}
