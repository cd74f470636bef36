package buffer

// Inspection: reading a buffer without changing it, on a live *Buffer (the
// committer keeps running) or on a file opened with OpenReadOnly while ferry
// is stopped. Long reads are cut into short read transactions, so a slow
// reader neither delays commits that grow the file nor keeps freed pages
// from being reused.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// offlineLockTimeout is how long the offline tools (OpenReadOnly, Purge,
// Compact, Salvage) wait for another process's lock before failing with
// ErrLocked.
const offlineLockTimeout = time.Second

// scanChunk is about how many records one read transaction visits.
const scanChunk = 512

// errStop ends a scan early without an error.
var errStop = errors.New("stop")

// Info describes a buffer file: its counters, the age of its records and how
// much of the file bbolt could reuse.
type Info struct {
	Path     string `json:"path"`
	ID       string `json:"id"`        // the log's identity, see Buffer.ID
	Records  uint64 `json:"records"`   // live records held
	Bytes    uint64 `json:"bytes"`     // encoded size of the live records
	FirstSeq uint64 `json:"first_seq"` // the head's sequence number; 0 when empty
	LastSeq  uint64 `json:"last_seq"`  // highest sequence number ever assigned
	// DeadLettered counts records dead-lettered, ever, by reason.
	DeadLettered map[Reason]uint64 `json:"dead_lettered"`
	// DeadLetterRecords and DeadLetterBytes are what the dead-letter
	// bucket holds now: records, and stored entry bytes.
	DeadLetterRecords uint64            `json:"dead_letter_records"`
	DeadLetterBytes   uint64            `json:"dead_letter_bytes"`
	Dropped           map[string]uint64 `json:"dropped"` // removed by limit or purge, ever, by reason
	// CorruptFiles are the damaged files moved aside next to this one
	// (OpenOrMoveAside), kept for inspection.
	CorruptFiles []string `json:"corrupt_files,omitempty"`
	// Oldest and Newest are the receive times of the head and of the last
	// record; zero when the buffer is empty.
	Oldest time.Time `json:"oldest,omitzero"`
	Newest time.Time `json:"newest,omitzero"`

	FileSize int64 `json:"file_size"` // bytes on disk
	PageSize int   `json:"page_size"`
	// UsedBytes is the part of the file in pages bbolt holds data in,
	// retired batches and dead letters included. Options.MaxBytes bounds
	// it less DeadLetterUsedBytes, the dead-letter bucket's pages.
	UsedBytes           int64 `json:"used_bytes"`
	DeadLetterUsedBytes int64 `json:"dead_letter_used_bytes"`
	// RetiredBytes is the size of the retired batches: delivered or
	// dropped records whose pages new records will reuse. A compaction
	// gives back FileSize-UsedBytes+RetiredBytes, about.
	RetiredBytes uint64 `json:"retired_bytes"`
	FreePages    int    `json:"free_pages"`    // pages on bbolt's freelist, reusable
	PendingPages int    `json:"pending_pages"` // freed pages still visible to an open read transaction
}

// FreeFraction is the share of the file that holds no live data: free
// pages, the space bbolt preallocated beyond its last page, and retired
// batches. It is what a compaction would give back, about.
func (i Info) FreeFraction() float64 {
	if i.FileSize <= 0 {
		return 0
	}
	return min(max(float64(i.FileSize-i.UsedBytes+int64(i.RetiredBytes))/float64(i.FileSize), 0), 1)
}

// Damage is one damaged part of a buffer file, found by Verify.
type Damage struct {
	// Batch is the key (first sequence number) of the batch concerned.
	Batch uint64 `json:"batch"`
	// Seq is the first damaged record; 0 when the damage is to the batch as
	// a whole (its checksum) and its records are checked one by one.
	Seq uint64 `json:"seq,omitempty"`
	// Records is how many live records cannot be read because of it.
	Records uint64 `json:"records"`
	Err     string `json:"err"`
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	// StructureChecked reports whether bbolt's own consistency check ran;
	// it needs the file to itself, so it is skipped on a live buffer.
	StructureChecked bool `json:"structure_checked"`
	// Problems are bbolt consistency errors and counters that disagree
	// with the records found (at most 100).
	Problems []string `json:"problems,omitempty"`
	Batches  int      `json:"batches"` // batch values read
	Records  uint64   `json:"records"` // live records that are intact
	Damaged  []Damage `json:"damaged,omitempty"`
	// DeadLetters is how many dead-letter entries were read; a damaged one
	// is a problem.
	DeadLetters int `json:"dead_letters"`
}

// OK reports whether nothing wrong was found.
func (r *VerifyReport) OK() bool { return len(r.Problems) == 0 && len(r.Damaged) == 0 }

// Unreadable is the number of live records the damage makes unreadable.
func (r *VerifyReport) Unreadable() uint64 {
	var n uint64
	for _, d := range r.Damaged {
		n += d.Records
	}
	return n
}

func (r *VerifyReport) problem(format string, args ...any) {
	if len(r.Problems) < 100 {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// Info returns the buffer's counters, record ages and file usage, read in one
// read transaction beside the running committer.
func (b *Buffer) Info() (Info, error) { return b.view().info() }

// Peek returns the next n live records from the head, in order, without
// changing anything (nothing is released or dead-lettered). Records that
// cannot be decoded are left out; Verify names them.
func (b *Buffer) Peek(n int) ([]Record, error) { return b.view().peek(n) }

// Each calls fn with every live record, in sequence order, outside any
// transaction, and stops at the first error fn returns, which it returns.
// It reads in short transactions, so on a live buffer records released
// meanwhile are not visited and records appended meanwhile are. skipped
// counts the live records that could not be decoded and were not passed to
// fn.
func (b *Buffer) Each(fn func(Record) error) (skipped uint64, err error) { return b.view().each(fn) }

// Verify checks every batch's, every live record's and every dead-letter
// entry's checksum, in short read transactions beside the running
// committer, and reports a damage mark (see DamageMark) as a problem.
// bbolt's consistency check and the counters check need the file to
// themselves (bbolt's check is not safe beside a writer, and inside a
// write transaction it would stall appends), so they are skipped:
// StructureChecked is false. For a full check, stop ferry and use
// OpenReadOnly.
func (b *Buffer) Verify(ctx context.Context) (VerifyReport, error) {
	return b.view().verify(ctx, false)
}

func (b *Buffer) view() fileView { return fileView{live: b, path: b.path} }

// ReadOnly is a buffer file opened for inspection only, while no ferry runs
// on it. It is safe for concurrent use.
type ReadOnly struct {
	v fileView
}

// OpenReadOnly opens the existing buffer file at path for inspection. It
// takes a shared lock and fails within a second with ErrLocked if a ferry
// holds the file; while it is open, a ferry cannot start on the file.
func OpenReadOnly(path string) (*ReadOnly, error) {
	if fi, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("open buffer %s: %w", path, err)
	} else if fi.Size() == 0 {
		return nil, fmt.Errorf("open buffer %s: %w: an empty file (0 bytes), not a database; ferry starts a new buffer in it", path, ErrCorruptFile)
	}
	db, err := openBoltOnce(path, &bolt.Options{ // a damaged file is an error, not a panic
		ReadOnly: true, Timeout: offlineLockTimeout,
		FreelistType: bolt.FreelistMapType, PreLoadFreelist: true, // for the free page counts
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open buffer %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open buffer %s: %w", path, err)
	}
	return &ReadOnly{v: fileView{db: db, path: path}}, nil
}

// Path returns the file.
func (r *ReadOnly) Path() string { return r.v.path }

// Close releases the file.
func (r *ReadOnly) Close() error {
	if err := r.v.db.Close(); err != nil {
		return fmt.Errorf("close buffer %s: %w", r.v.path, err)
	}
	return nil
}

// Info is Buffer.Info for a file at rest.
func (r *ReadOnly) Info() (Info, error) { return r.v.info() }

// Peek is Buffer.Peek for a file at rest.
func (r *ReadOnly) Peek(n int) ([]Record, error) { return r.v.peek(n) }

// Each is Buffer.Each for a file at rest.
func (r *ReadOnly) Each(fn func(Record) error) (skipped uint64, err error) { return r.v.each(fn) }

// Verify runs bbolt's consistency check, checks that the batches are in
// order and do not overlap, checks every batch's and every live record's
// checksum and every dead-letter entry's, and checks the meta counters
// against the records and dead letters found, all in one read
// transaction; a damage mark (see DamageMark) is a problem too. An error
// means the check could not run to the end; what it found is in the
// report either way.
func (r *ReadOnly) Verify(ctx context.Context) (VerifyReport, error) { return r.v.verify(ctx, true) }

// fileView holds what the inspection code needs of a buffer: its bbolt file.
type fileView struct {
	db   *bolt.DB // a file opened read-only; nil for a live buffer
	live *Buffer  // a live buffer, whose file a compaction may replace
	path string
}

// viewTx runs fn in a read transaction, turning a closed database into
// ErrClosed and a bbolt panic on a damaged page into an error wrapping
// ErrCorrupt.
func (v fileView) viewTx(fn func(tx *bolt.Tx) error) (err error) {
	db := v.db
	if v.live != nil { // each transaction reads the current file
		v.live.dbMu.RLock()
		defer v.live.dbMu.RUnlock()
		db = v.live.db
	}
	err = guard(func() error { return db.View(fn) })
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// readState loads the meta counters.
func readState(tx *bolt.Tx) (state, *bolt.Bucket, error) {
	meta, batches := tx.Bucket(bucketMeta), tx.Bucket(bucketBatches)
	if meta == nil || batches == nil {
		return state{}, nil, errors.New("not a ferry buffer: its buckets are missing")
	}
	st := state{next: 1, head: 1}
	st.load(meta)
	return st, batches, nil
}

func (v fileView) info() (Info, error) {
	info := Info{Path: v.path}
	fi, err := os.Stat(v.path)
	if err != nil {
		return info, fmt.Errorf("inspect buffer %s: %w", v.path, err)
	}
	info.FileSize = fi.Size()
	err = v.viewTx(func(tx *bolt.Tx) error {
		st, batches, err := readState(tx)
		if err != nil {
			return err
		}
		info.ID, info.Records, info.Bytes, info.LastSeq = st.id, st.count, st.bytes, st.next-1
		info.DeadLettered, info.DeadLetterRecords, info.DeadLetterBytes = st.deadLettered, st.dlRecords, st.dlBytes
		info.Dropped = st.dropped()
		if st.count > 0 {
			info.FirstSeq = st.head
			info.Oldest = firstTime(batches, st.head)
			info.Newest = lastTime(batches, st.head)
		}
		s := tx.DB().Stats()
		info.PageSize = tx.DB().Info().PageSize
		info.FreePages, info.PendingPages = s.FreePageN, s.PendingPageN
		info.UsedBytes = usedBytes(tx)
		info.DeadLetterUsedBytes = int64(deadLetterDisk(tx))
		info.RetiredBytes = st.retired
		info.CorruptFiles = CorruptFiles(v.path)
		return nil
	})
	if err != nil {
		return info, fmt.Errorf("inspect buffer %s: %w", v.path, err)
	}
	return info, nil
}

// firstTime is the receive time of the first live record at or after head.
func firstTime(batches *bolt.Bucket, head uint64) time.Time {
	c := batches.Cursor()
	for k, v := seekBatch(c, head); k != nil; k, v = c.Next() {
		base := binary.BigEndian.Uint64(k)
		recs, _, _ := parseBatch(base, v)
		for i, raw := range recs {
			if base+uint64(i) >= head && len(raw) > 0 {
				return recordTime(raw)
			}
		}
	}
	return time.Time{}
}

// lastTime is the receive time of the last live record.
func lastTime(batches *bolt.Bucket, head uint64) time.Time {
	c := batches.Cursor()
	for k, v := c.Last(); k != nil; k, v = c.Prev() {
		base := binary.BigEndian.Uint64(k)
		recs, _, _ := parseBatch(base, v)
		for i := len(recs) - 1; i >= 0; i-- {
			if base+uint64(i) < head {
				return time.Time{}
			}
			if len(recs[i]) > 0 {
				return recordTime(recs[i])
			}
		}
	}
	return time.Time{}
}

// batchSpan is how many sequence numbers the batch at base covers: the
// count in its header or, if that is unreadable, up to the next batch (or
// to next, the next sequence number to assign).
func batchSpan(batches *bolt.Bucket, base uint64, count int, next uint64) uint64 {
	if count > 0 {
		return uint64(count)
	}
	if k, _ := batches.Cursor().Seek(seqKey(base + 1)); k != nil {
		return binary.BigEndian.Uint64(k) - base
	}
	if next > base {
		return next - base
	}
	return 1
}

func (v fileView) peek(n int) ([]Record, error) {
	recs := []Record{}
	if n <= 0 {
		return recs, nil
	}
	_, err := v.each(func(r Record) error {
		recs = append(recs, r)
		if len(recs) == n {
			return errStop
		}
		return nil
	})
	return recs, err
}

func (v fileView) each(fn func(Record) error) (skipped uint64, err error) {
	var after uint64 // the last sequence number visited
	for {
		var recs []Record
		done := false
		err := v.viewTx(func(tx *bolt.Tx) error {
			st, batches, err := readState(tx)
			if err != nil {
				return err
			}
			after = max(after, st.head-1)
			c := batches.Cursor()
			k, val := seekBatch(c, after+1)
			readahead(tx, val, readaheadBytes)
			for ; k != nil && len(recs) < scanChunk; k, val = c.Next() {
				base := binary.BigEndian.Uint64(k)
				raws, count, perr := parseBatch(base, val)
				for i, raw := range raws {
					seq := base + uint64(i)
					if seq <= after || len(raw) == 0 {
						continue
					}
					after = seq
					rec, err := decode(raw)
					if err != nil {
						skipped++
						continue
					}
					rec.Seq = seq
					recs = append(recs, rec)
				}
				if framingBroken(raws, count, perr) {
					if end := base + batchSpan(batches, base, count, st.next) - 1; end > after {
						skipped += end - max(after, base+uint64(len(raws))-1)
						after = end
					}
				}
			}
			done = k == nil
			return nil
		})
		if err != nil {
			return skipped, fmt.Errorf("read buffer %s: %w", v.path, err)
		}
		for _, r := range recs {
			if err := fn(r); err != nil {
				if errors.Is(err, errStop) {
					return skipped, nil
				}
				return skipped, err
			}
		}
		if done {
			return skipped, nil
		}
	}
}

// verifier accumulates what Verify finds, batch by batch.
type verifier struct {
	rep     VerifyReport
	st      state
	prevEnd uint64 // the sequence number after the previous batch
	count   uint64 // live records framed
	bytes   uint64 // their encoded size
	retired uint64 // size of the batches before the head
	lost    bool   // some records could not be framed: counters cannot be compared
}

func (vf *verifier) batch(batches *bolt.Bucket, k, val []byte) {
	vf.rep.Batches++
	if len(k) != 8 {
		vf.rep.problem("batch key %x is not a sequence number", k)
		return
	}
	base := binary.BigEndian.Uint64(k)
	if base < vf.prevEnd {
		vf.rep.problem("batch %d overlaps the previous batch, which ends at %d", base, vf.prevEnd-1)
	}
	raws, count, perr := parseBatch(base, val)
	broken := framingBroken(raws, count, perr)
	span := uint64(len(raws))
	if broken {
		span = batchSpan(batches, base, count, vf.st.next)
	}
	if base+span <= vf.st.head { // retired: nothing in it is read again
		vf.retired += uint64(len(val))
		vf.prevEnd = max(vf.prevEnd, base+span)
		return
	}
	if perr != nil && !broken {
		vf.rep.Damaged = append(vf.rep.Damaged, Damage{Batch: base, Err: perr.Error()})
	}
	for i, raw := range raws {
		seq := base + uint64(i)
		if seq < vf.st.head || len(raw) == 0 {
			continue
		}
		vf.count++
		vf.bytes += uint64(len(raw))
		if _, err := decode(raw); err != nil {
			vf.rep.Damaged = append(vf.rep.Damaged, Damage{Batch: base, Seq: seq, Records: 1, Err: err.Error()})
			continue
		}
		vf.rep.Records++
	}
	if broken {
		first := max(base+uint64(len(raws)), vf.st.head)
		var n uint64
		if end := base + span; end > first {
			n = end - first
		}
		vf.rep.Damaged = append(vf.rep.Damaged, Damage{Batch: base, Seq: first, Records: n, Err: perr.Error()})
		vf.lost = true
	}
	vf.prevEnd = max(vf.prevEnd, base+span)
}

func (v fileView) verify(ctx context.Context, full bool) (VerifyReport, error) {
	vf := verifier{}
	vf.rep.StructureChecked = full
	if err := damageMarked(v.path); err != nil {
		vf.rep.problem("%v", err)
	}
	var after []byte // key of the last batch checked
	for {
		done := false
		err := v.viewTx(func(tx *bolt.Tx) error {
			if full && after == nil {
				if err := guard(func() error { return checkTx(tx, v.path) }); err != nil {
					// Reading the batches below may meet the same damage
					// and end the verification early.
					vf.rep.problem("structure: %v", err)
				}
			}
			st, batches, err := readState(tx)
			if err != nil {
				return err
			}
			if after == nil {
				vf.st = st
			}
			c := batches.Cursor()
			k, val := c.First()
			if after != nil {
				if k, val = c.Seek(after); k != nil && string(k) == string(after) {
					k, val = c.Next()
				}
			}
			for n := 0; k != nil && (full || n < scanChunk/8); k, val = c.Next() {
				if err := ctx.Err(); err != nil {
					return err
				}
				vf.batch(batches, k, val)
				after = append(after[:0], k...)
				n++
			}
			done = k == nil
			if done {
				vf.deadLetters(tx, full)
			}
			if done && full {
				if last := vf.prevEnd; last > st.next {
					vf.rep.problem("meta next_seq %d is not above the last record %d", st.next, last-1)
				}
				if !vf.lost && (vf.count != st.count || vf.bytes != st.bytes) {
					vf.rep.problem("meta counts %d records of %d bytes; the batches hold %d of %d bytes",
						st.count, st.bytes, vf.count, vf.bytes)
				}
				if vf.retired != st.retired {
					vf.rep.problem("meta counts %d bytes of retired batches; the batches before the head hold %d",
						st.retired, vf.retired)
				}
			}
			return nil
		})
		if err != nil {
			return vf.rep, fmt.Errorf("verify buffer %s: %w", v.path, err)
		}
		if done {
			return vf.rep, nil
		}
	}
}

// JSONRecord is a record in ferry's export format, one JSON object per line:
//
//	seq               sequence number in the buffer
//	topic             MQTT topic
//	qos, retain       as received
//	received_at       RFC 3339 time with nanoseconds, UTC
//	payload           the payload as a string, when it is valid UTF-8
//	payload_base64    otherwise, the payload in standard base64
//	payload_utf8      the MQTT v5 payload format indicator, when set
//	content_type, response_topic              when present
//	correlation_data  base64, when present
//	user_properties   [[key, value], ...], in order, when present
//	clock_unsynced    true when received while the clock was not synchronized
type JSONRecord struct {
	Seq             uint64      `json:"seq"`
	Topic           string      `json:"topic"`
	QoS             byte        `json:"qos"`
	Retain          bool        `json:"retain"`
	ReceivedAt      time.Time   `json:"received_at"`
	Payload         *string     `json:"payload,omitempty"`
	PayloadBase64   []byte      `json:"payload_base64,omitempty"`
	PayloadUTF8     bool        `json:"payload_utf8,omitempty"`
	ClockUnsynced   bool        `json:"clock_unsynced,omitempty"`
	ContentType     string      `json:"content_type,omitempty"`
	ResponseTopic   string      `json:"response_topic,omitempty"`
	CorrelationData []byte      `json:"correlation_data,omitempty"`
	UserProperties  [][2]string `json:"user_properties,omitempty"`
}

// NewJSONRecord converts r to its export form.
func NewJSONRecord(r Record) JSONRecord {
	j := JSONRecord{
		Seq: r.Seq, Topic: r.Topic, QoS: r.QoS, Retain: r.Retain, ReceivedAt: r.ReceivedAt.UTC(),
		PayloadUTF8: r.PayloadUTF8, ClockUnsynced: r.ClockUnsynced, ContentType: r.ContentType, ResponseTopic: r.ResponseTopic,
		CorrelationData: r.CorrelationData,
	}
	if utf8.Valid(r.Payload) {
		p := string(r.Payload)
		j.Payload = &p
	} else {
		j.PayloadBase64 = r.Payload
	}
	for _, p := range r.UserProperties {
		j.UserProperties = append(j.UserProperties, [2]string{p.Key, p.Value})
	}
	return j
}

// Record converts j back into a record.
func (j JSONRecord) Record() (Record, error) {
	if (j.Payload == nil) == (j.PayloadBase64 == nil) {
		return Record{}, fmt.Errorf("record %d: want exactly one of payload and payload_base64", j.Seq)
	}
	r := Record{
		Seq: j.Seq, Topic: j.Topic, QoS: j.QoS, Retain: j.Retain, ReceivedAt: j.ReceivedAt,
		PayloadUTF8: j.PayloadUTF8, ClockUnsynced: j.ClockUnsynced, ContentType: j.ContentType, ResponseTopic: j.ResponseTopic,
		CorrelationData: j.CorrelationData, Payload: j.PayloadBase64,
	}
	if j.Payload != nil {
		r.Payload = []byte(*j.Payload)
	}
	for _, p := range j.UserProperties {
		r.UserProperties = append(r.UserProperties, Property{Key: p[0], Value: p[1]})
	}
	return r, nil
}

// WriteJSON writes r to w as one line of the export format (see JSONRecord).
func WriteJSON(w io.Writer, r Record) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(NewJSONRecord(r))
}

// syncDir fsyncs the directory holding path, so a created or renamed entry
// survives a power cut.
func syncDir(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
