// Package buffer is ferry's durable FIFO: an ordered log of records in one
// bbolt file.
//
// Durability: Append queues a record and returns; one goroutine, the
// committer, writes everything queued so far as one batch in one bbolt
// transaction with one fsync (group commit), then calls each appender's
// callback, in append order. A callback with a nil error means the record is
// on disk and survives a crash or power cut; only then may its source be
// acknowledged. With SyncInterval the committer commits at most once per
// interval: fewer, larger writes (kinder to flash), the same guarantee,
// more latency.
//
// Order: records get sequence numbers that only grow, across restarts too,
// and the file's ID (random, kept by compaction and salvage, new for a new
// file) names the log they belong to: (ID, Seq) is unique forever.
// Read returns records in sequence order. Records leave the buffer through
// Release, which removes a prefix ("everything up to seq is delivered"), and
// through the configured limits (MaxBytes with DropOldest, MaxAge), which
// remove the oldest records and count them by reason. A record that cannot be
// delivered leaves through DeadLetter into the dead-letter bucket (kept with
// its reason, counted, logged; see deadletter.go), and so does a stored
// record that cannot be decoded: nothing is skipped silently. The
// dead-letter bucket has its own bound (MaxDeadLetterBytes, oldest entries
// dropped and counted) and does not count toward MaxBytes: the file holds
// at most MaxBytes of FIFO plus MaxDeadLetterBytes of dead letters, so
// records that fail can never push live records out.
//
// Memory: appends wait for the committer in a queue bounded by count
// (QueueSize) and by bytes (QueueBytes); Append blocks beyond either.
//
// Cost does not depend on depth: counters live in a meta bucket updated in
// the same transaction as the records, the head is found with one cursor
// seek, and a release only moves the head: the batches it empties are
// retired, and deleted as new records need their space (see reclaim).
//
// The buffer knows nothing of MQTT or Kafka.
package buffer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// maxBatchBytes is the size of record data at which a commit starts a new
// batch value.
var maxBatchBytes = 1024

// ErrClosed is returned by operations on a closed buffer.
var ErrClosed = errors.New("buffer closed")

// ErrLocked is returned (wrapped) by Open when another process holds the file.
var ErrLocked = errors.New("buffer file is locked by another process")

var (
	bucketBatches    = []byte("batches")
	bucketMeta       = []byte("meta")
	bucketQuarantine = []byte("quarantine") // before the dead-letter bucket; migrated by Open

	keyNextSeq     = []byte("next_seq")
	keyHeadSeq     = []byte("head_seq")
	keyCount       = []byte("count")
	keyBytes       = []byte("bytes")
	keyQuarantined = []byte("quarantined")
	keyDropBytes   = []byte("dropped_max_bytes")
	keyDropAge     = []byte("dropped_max_age")
	keyDropPurged  = []byte("dropped_purged")
	keyDropDLLimit = []byte("dropped_dead_letter_limit")
	keyDropDLPurge = []byte("dropped_dead_letter_purged")
	keyDLRecords   = []byte("dead_letter_records")
	keyDLBytes     = []byte("dead_letter_bytes")
	keyRetired     = []byte("retired_bytes")
)

// WhenFull says what happens when MaxBytes is reached.
type WhenFull int

const (
	// DropOldest removes the oldest records to make room (counted as
	// dropped for max_bytes): telemetry wants the newest.
	DropOldest WhenFull = iota
	// Block stops accepting appends until there is room again: the source
	// is not acknowledged and feels the backpressure.
	Block
)

// Options tune a buffer. The zero value is a sensible default: fsync before
// every acknowledgement, no limits.
type Options struct {
	// LockTimeout is how long Open waits for another process's lock on the
	// file before failing with ErrLocked. Default 1s.
	LockTimeout time.Duration
	// MaxBatch is the most records written in one transaction. Default 8192.
	MaxBatch int
	// QueueSize is how many appends may wait for the committer; Append blocks
	// beyond it (backpressure). Default 16384.
	QueueSize int
	// QueueBytes bounds the encoded bytes of the appends waiting for the
	// committer: Append blocks while its record would take them above
	// QueueBytes, unless none wait, so a record larger than QueueBytes
	// still goes through, alone. Default 16 MiB.
	QueueBytes int
	// SyncInterval, if above zero, makes the committer commit (and fsync) at
	// most once per interval. Callbacks still wait for the fsync.
	SyncInterval time.Duration
	// MaxBytes bounds the disk space the buffer occupies: the pages of the
	// file that hold data (records, retired batches and bbolt's tree), not
	// counting free pages, which bbolt reuses, nor the dead-letter bucket,
	// which MaxDeadLetterBytes bounds on its own. It is
	// enforced on the records' encoded size scaled by the file's overhead
	// as measured at the previous commit (see diskRatio), so it holds to
	// within about one commit; below 1 MiB of records it counts their
	// encoded size. The file itself stays within MaxBytes plus bbolt's
	// growth step. 0: no bound.
	MaxBytes int64
	// WhenFull is what happens at MaxBytes. Default DropOldest.
	WhenFull WhenFull
	// MaxAge drops records received longer ago than this; 0: never.
	MaxAge time.Duration
	// MaxDeadLetterBytes bounds the dead-letter bucket's stored entry
	// bytes. When a commit leaves more, the oldest entries (lowest sequence
	// numbers) are deleted and their records counted as dropped for
	// DropDeadLetterLimit; an entry larger than the bound is not kept. It
	// is apart from MaxBytes: the file holds up to MaxBytes of FIFO plus
	// MaxDeadLetterBytes of dead letters, so dead letters never push live
	// records out. Default (0) 64 MiB; negative: no bound.
	MaxDeadLetterBytes int64
	// CompactMinSize and CompactMinFree: when a commit empties the buffer
	// and the file is at least CompactMinSize bytes with at least
	// CompactMinFree of it free, the committer rewrites it compactly
	// (bbolt never shrinks its file). Defaults 64 MiB and 0.5; a negative
	// CompactMinSize turns it off.
	CompactMinSize int64
	CompactMinFree float64
	// Logger receives dead-letter, drop and commit-failure events.
	// Default: discard.
	Logger *slog.Logger
	// Now is the clock for MaxAge. Default time.Now.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.LockTimeout <= 0 {
		o.LockTimeout = time.Second
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 8192
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 16384
	}
	if o.QueueBytes <= 0 {
		o.QueueBytes = 16 << 20
	}
	if o.MaxDeadLetterBytes == 0 {
		o.MaxDeadLetterBytes = 64 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CompactMinSize == 0 {
		o.CompactMinSize = 64 << 20
	}
	if o.CompactMinFree <= 0 {
		o.CompactMinFree = 0.5
	}
}

// Stats is a snapshot of the buffer's counters. It costs nothing to take:
// the counters are kept, not recomputed.
type Stats struct {
	Records  uint64 // records held
	Bytes    uint64 // encoded size of the records held
	FirstSeq uint64 // sequence number of the head; 0 when empty
	LastSeq  uint64 // highest sequence number ever assigned; 0 if none
	// DeadLettered counts records dead-lettered since the file was
	// created, by reason.
	DeadLettered map[Reason]uint64
	// DeadLetterRecords and DeadLetterBytes are what the dead-letter
	// bucket holds now: records, and stored entry bytes.
	DeadLetterRecords, DeadLetterBytes uint64
	// Dropped counts records removed by a limit or a purge, by reason
	// (DropMaxBytes, ...), since the file was created.
	Dropped map[string]uint64
	// ID identifies the buffer's log (see Buffer.ID).
	ID      string
	Commits uint64 // write transactions since Open
	// CorruptFiles is how many damaged buffer files lie moved aside next to
	// this one (path.corrupt-*, see OpenOrMoveAside), as found at Open:
	// records in them were not delivered by this buffer.
	CorruptFiles int
}

// Drop reasons, as used in Stats.Dropped.
const (
	DropMaxBytes = "max_bytes"
	DropMaxAge   = "max_age"
	DropPurged   = "purged" // removed by Purge (ferry buffer purge)
	// DropDeadLetterLimit: dead-letter entries removed, oldest first, to
	// keep the bucket within Options.MaxDeadLetterBytes.
	DropDeadLetterLimit = "dead_letter_limit"
	// DropDeadLetterPurged: dead-letter entries removed by a dead-letter
	// purge (ferry buffer dlq purge).
	DropDeadLetterPurged = "dead_letter_purged"
)

// state is what the meta bucket holds, mirrored in memory. Copies share
// deadLettered: clone before changing a copy.
type state struct {
	next, head, count, bytes       uint64
	dropBytes, dropAge, dropPurged uint64
	dropDLLimit, dropDLPurged      uint64
	// retired is the size of the batch values before the head: every
	// record in them released or dropped, the batches not yet deleted
	// (see reclaim).
	retired uint64
	// dlRecords and dlBytes are what the dead-letter bucket holds.
	dlRecords, dlBytes uint64
	// deadLettered counts records dead-lettered, ever, by reason.
	deadLettered map[Reason]uint64
	id           string
}

func (s state) clone() state {
	s.deadLettered = maps.Clone(s.deadLettered)
	return s
}

func (s *state) fields() []struct {
	k []byte
	v *uint64
} {
	return []struct {
		k []byte
		v *uint64
	}{
		{keyNextSeq, &s.next}, {keyHeadSeq, &s.head}, {keyCount, &s.count}, {keyBytes, &s.bytes},
		{keyDropBytes, &s.dropBytes}, {keyDropAge, &s.dropAge}, {keyDropPurged, &s.dropPurged},
		{keyDropDLLimit, &s.dropDLLimit}, {keyDropDLPurge, &s.dropDLPurged}, {keyRetired, &s.retired},
		{keyDLRecords, &s.dlRecords}, {keyDLBytes, &s.dlBytes},
	}
}

// dropped is the drop counters by reason.
func (s *state) dropped() map[string]uint64 {
	return map[string]uint64{DropMaxBytes: s.dropBytes, DropMaxAge: s.dropAge, DropPurged: s.dropPurged,
		DropDeadLetterLimit: s.dropDLLimit, DropDeadLetterPurged: s.dropDLPurged}
}

func (s *state) load(meta *bolt.Bucket) {
	for _, f := range s.fields() {
		if v := meta.Get(f.k); len(v) == 8 {
			*f.v = binary.BigEndian.Uint64(v)
		}
	}
	s.id = string(meta.Get(keyID))
	s.deadLettered = map[Reason]uint64{}
	if dl := meta.Bucket(bucketDeadLettered); dl != nil {
		dl.ForEach(func(k, v []byte) error {
			if len(v) == 8 {
				s.deadLettered[Reason(k)] = binary.BigEndian.Uint64(v)
			}
			return nil
		})
	}
}

func (s *state) store(meta *bolt.Bucket) error {
	for _, f := range s.fields() {
		if err := meta.Put(f.k, binary.BigEndian.AppendUint64(nil, *f.v)); err != nil {
			return err
		}
	}
	if s.id != "" {
		if err := meta.Put(keyID, []byte(s.id)); err != nil {
			return err
		}
	}
	dl, err := meta.CreateBucketIfNotExists(bucketDeadLettered)
	if err != nil {
		return err
	}
	for r, n := range s.deadLettered {
		if r == "" { // bbolt refuses an empty key
			r = reasonUnspecified
		}
		if err := dl.Put([]byte(r), binary.BigEndian.AppendUint64(nil, n)); err != nil {
			return err
		}
	}
	return nil
}

// Buffer is a durable FIFO of records. It is safe for concurrent use.
type Buffer struct {
	dbMu sync.RWMutex // held shared by readers of db; the committer swaps db under it after compacting
	db   *bolt.DB
	path string
	opts Options
	log  *slog.Logger

	reqs     chan appendReq
	wake     chan struct{} // one slot: Release or DeadLetter has work for the committer
	stop     chan struct{} // closed by Close
	quit     chan struct{} // closed first thing in Close: blocked appends give up
	quitOnce sync.Once
	done     chan struct{} // closed when the committer has exited

	closeMu sync.RWMutex // held shared while sending to reqs; exclusive to close
	closed  bool

	qmu      sync.Mutex
	queued   int           // encoded bytes of the appends not yet committed (QueueBytes)
	dequeued chan struct{} // if not nil, an append waits: closed when queued falls

	// credit is the committer's own: bytes of retired batches deleted
	// beyond what appends have taken since, so free pages bbolt still has.
	credit uint64
	// dl is the committer's own: the pages the dead-letter bucket takes.
	dl dlPages

	mu        sync.Mutex // guards the fields below
	st        state
	ratio     float64 // disk bytes in use per record byte, as last measured
	commits   uint64
	corrupt   int                // files moved aside next to path, at Open
	releaseTo uint64             // Release target not yet applied
	toDead    map[uint64]deadReq // DeadLetter requests not yet applied
	deadOps   []deadOp           // replays and purges of dead letters not yet applied
	changed   chan struct{}      // closed and replaced after every commit
	lastDrop  time.Time          // last time a drop was logged
}

type appendReq struct {
	val  []byte
	done func(seq uint64, err error)
}

// Open opens or creates the buffer file at path (mode 0600, parent
// directories 0700). It fails fast with ErrLocked if another process has it
// open. Its cost does not depend on how many records the file holds.
func Open(path string, opts Options) (*Buffer, error) {
	opts.setDefaults()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open buffer %s: %w", path, err)
	}
	db, err := openBolt(path, &bolt.Options{Timeout: opts.LockTimeout, FreelistType: bolt.FreelistMapType})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open buffer %s: %w (is another ferry running on it?)", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open buffer %s: %w", path, err)
	}
	b := &Buffer{
		db:      db,
		path:    path,
		opts:    opts,
		log:     opts.Logger,
		reqs:    make(chan appendReq, opts.QueueSize),
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
		toDead:  map[uint64]deadReq{},
		changed: make(chan struct{}),
		st:      state{next: 1, head: 1},
		ratio:   1,
		corrupt: len(CorruptFiles(path)),
	}
	err = db.Update(func(tx *bolt.Tx) error {
		batches, err := tx.CreateBucketIfNotExists(bucketBatches)
		if err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		b.st.load(meta)
		if err := migrateQuarantine(tx, &b.st, opts.Now()); err != nil {
			return fmt.Errorf("move the quarantine to the dead-letter bucket: %w", err)
		}
		b.dl.stale = true
		if b.st.id == "" {
			if b.st.id, err = newID(); err != nil {
				return err
			}
		}
		if k, v := batches.Cursor().Last(); k != nil {
			_, n, _ := parseBatch(v)
			if last := binary.BigEndian.Uint64(k) + uint64(n) - 1; last >= b.st.next {
				return fmt.Errorf("%w: meta next_seq %d is not above the last record %d", ErrCorruptFile, b.st.next, last)
			}
		}
		return b.st.store(meta)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open buffer %s: %w", path, err)
	}
	go b.commitLoop()
	return b, nil
}

// Path returns the file the buffer lives in.
func (b *Buffer) Path() string { return b.path }

// Append queues rec for the next commit and returns without waiting for it.
// done is called exactly once, from the committer, after the commit: with the
// record's sequence number and a nil error once it is durable, or with the
// commit's error. Callbacks run in append order and must not block. Append
// blocks while the queue is full (and, with Block, while the buffer is
// full), and fails with ErrClosed after Close. rec is encoded before Append
// returns; the caller may reuse it.
func (b *Buffer) Append(rec *Record, done func(seq uint64, err error)) error {
	val := appendEncoded(make([]byte, 0, 64+len(rec.Topic)+len(rec.Payload)), rec)
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	if err := b.reserve(len(val)); err != nil {
		return err
	}
	select {
	case b.reqs <- appendReq{val: val, done: done}:
		return nil
	case <-b.quit: // Close was called while the queue was full
		b.unreserve(len(val))
		return ErrClosed
	}
}

// reserve waits until n more bytes fit in QueueBytes (or none are queued)
// and counts them as queued.
func (b *Buffer) reserve(n int) error {
	b.qmu.Lock()
	for b.queued > 0 && b.queued+n > b.opts.QueueBytes {
		if b.dequeued == nil {
			b.dequeued = make(chan struct{})
		}
		ch := b.dequeued
		b.qmu.Unlock()
		select {
		case <-ch:
		case <-b.quit: // Close was called while the queue was full
			return ErrClosed
		}
		b.qmu.Lock()
	}
	b.queued += n
	b.qmu.Unlock()
	return nil
}

// unreserve takes n bytes off the queue and wakes the appends waiting.
func (b *Buffer) unreserve(n int) {
	if n == 0 {
		return
	}
	b.qmu.Lock()
	b.queued -= n
	if b.dequeued != nil {
		close(b.dequeued)
		b.dequeued = nil
	}
	b.qmu.Unlock()
}

// AppendWait appends rec and waits until it is durable.
func (b *Buffer) AppendWait(ctx context.Context, rec *Record) (uint64, error) {
	type result struct {
		seq uint64
		err error
	}
	ch := make(chan result, 1)
	if err := b.Append(rec, func(seq uint64, err error) { ch <- result{seq, err} }); err != nil {
		return 0, err
	}
	select {
	case r := <-ch:
		return r.seq, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Read returns records with sequence numbers above after, in order,
// appending them to dst[:0]: at most maxRecords of them, and it stops
// before their payload and topic bytes would exceed maxBytes (0 or less:
// no byte bound), but it returns at least one record when there is one,
// however large. It waits until at least one such record exists, ctx is
// done (ctx.Err()) or the buffer is closed (ErrClosed). Records that cannot
// be decoded are dead-lettered (ReasonUndecodable) and not returned.
func (b *Buffer) Read(ctx context.Context, after uint64, maxRecords, maxBytes int, dst []Record) ([]Record, error) {
	limit := max(maxRecords, 1)
	size := 0 // payload and topic bytes in dst
	dst = dst[:0]
	for {
		b.mu.Lock()
		changed, last := b.changed, b.st.next-1
		after = max(after, b.st.head-1) // released or dropped meanwhile: start at the head
		b.mu.Unlock()
		if after >= last {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return dst, ctx.Err()
			case <-b.done:
				return dst, ErrClosed
			}
		}
		var scanned uint64
		var payloads arena
		b.dbMu.RLock()
		err := b.db.View(func(tx *bolt.Tx) error {
			// The head as of this transaction: records a limit dropped
			// since the check above are not returned (and then counted
			// as both dropped and delivered).
			if h := getUint(tx.Bucket(bucketMeta), keyHeadSeq); h > after+1 {
				after = h - 1
			}
			c := tx.Bucket(bucketBatches).Cursor()
			k, v := seekBatch(c, after+1)
			readahead(tx, v, readaheadBytes)
			for ; k != nil && len(dst) < limit; k, v = c.Next() {
				base := binary.BigEndian.Uint64(k)
				recs, count, perr := parseBatch(v)
				if perr != nil {
					b.log.Error("buffer: damaged batch; salvaging intact records", "path", b.path, "first_seq", base, "err", perr)
				}
				for i, raw := range recs {
					seq := base + uint64(i)
					if seq <= after || len(raw) == 0 {
						continue
					}
					if len(dst) == limit {
						return nil
					}
					// A batch whose checksum held vouches for its
					// records' bytes; a damaged one has each record
					// checked on its own.
					rec, err := decodeWith(raw, perr != nil, &payloads)
					if err != nil {
						scanned = seq
						b.DeadLetter(seq, ReasonUndecodable, err)
						continue
					}
					n := len(rec.Payload) + len(rec.Topic)
					if maxBytes > 0 && len(dst) > 0 && size+n > maxBytes {
						return nil
					}
					scanned = seq
					size += n
					rec.Seq = seq
					dst = append(dst, rec)
				}
				if framingBroken(recs, count, perr) { // the rest of the batch is unreadable
					b.DeadLetter(base+uint64(len(recs)), ReasonBrokenBatch, perr)
				}
				scanned = max(scanned, base+uint64(count)-1)
			}
			return nil
		})
		b.dbMu.RUnlock()
		if err != nil {
			if errors.Is(err, berrors.ErrDatabaseNotOpen) {
				return dst, ErrClosed
			}
			return dst, fmt.Errorf("read buffer %s: %w", b.path, err)
		}
		if len(dst) > 0 {
			return dst, nil
		}
		if scanned > after {
			after = scanned // everything scanned was removed or bad; look further
		} else {
			// Nothing readable up to the last record: wait for more.
			b.mu.Lock()
			stale := b.changed == changed
			b.mu.Unlock()
			if stale {
				select {
				case <-changed:
				case <-ctx.Done():
					return dst, ctx.Err()
				case <-b.done:
					return dst, ErrClosed
				}
			}
		}
	}
}

// seekBatch positions c on the batch holding seq (or the first after it).
func seekBatch(c *bolt.Cursor, seq uint64) ([]byte, []byte) {
	k, v := c.Seek(seqKey(seq))
	if k != nil && binary.BigEndian.Uint64(k) == seq {
		return k, v
	}
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	if k == nil { // seq is before the first batch
		return c.First()
	}
	base := binary.BigEndian.Uint64(k)
	_, n, _ := parseBatch(v)
	if n == 0 { // header unreadable: the batch reaches up to the next one
		if nk, nv := c.Next(); nk != nil && binary.BigEndian.Uint64(nk) <= seq {
			return nk, nv
		}
		return c.Seek(k)
	}
	if base+uint64(n) <= seq {
		return c.Next() // that batch ends before seq
	}
	return k, v
}

func getUint(b *bolt.Bucket, k []byte) uint64 {
	if v := b.Get(k); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// Release removes every record with a sequence number up to and including
// seq: they were delivered. It returns at once; the removal is written with
// the next commit. If it is lost in a crash, the records are read again
// (delivered twice, never lost).
func (b *Buffer) Release(seq uint64) {
	b.mu.Lock()
	b.releaseTo = max(b.releaseTo, seq)
	b.mu.Unlock()
	b.signal()
}

func (b *Buffer) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Stats returns the buffer's counters.
func (b *Buffer) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Stats{
		Records:           b.st.count,
		Bytes:             b.st.bytes,
		LastSeq:           b.st.next - 1,
		DeadLettered:      maps.Clone(b.st.deadLettered),
		DeadLetterRecords: b.st.dlRecords,
		DeadLetterBytes:   b.st.dlBytes,
		Dropped:           b.st.dropped(),
		ID:                b.st.id,
		Commits:           b.commits,
		CorruptFiles:      b.corrupt,
	}
	if b.st.count > 0 {
		s.FirstSeq = b.st.head
	}
	return s
}

// Close stops accepting appends, commits what is queued (calling its
// callbacks), and closes the file. Blocked readers return ErrClosed.
func (b *Buffer) Close() error {
	b.quitOnce.Do(func() { close(b.quit) }) // release appends blocked on a full queue
	b.closeMu.Lock()
	if b.closed {
		b.closeMu.Unlock()
		return nil
	}
	b.closed = true
	b.closeMu.Unlock()
	close(b.stop)
	<-b.done
	b.dbMu.Lock()
	defer b.dbMu.Unlock()
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("close buffer %s: %w", b.path, err)
	}
	return nil
}

// readaheadBytes is how much of the file Read asks the kernel to read
// ahead of the batch it starts at.
const readaheadBytes = 1 << 20

// releaseInterval is the least time between two commits that only release
// (or dead-letter) records: a forwarder releases many times a second, and
// every commit costs the disk a few pages however little it changes.
const releaseInterval = 100 * time.Millisecond

// drainedBytes is the most record data left in the buffer for a backlog
// to count as drained (see compactIfSparse).
const drainedBytes = 1 << 20

// ratioMinBytes is the least record data from which the file's overhead is
// measured: below it bbolt's fixed pages (meta, freelist, bucket roots)
// would dominate the ratio, and MaxBytes counts record bytes as they are.
const ratioMinBytes = 1 << 20

// diskRatio measures, at the start of a write transaction, how many bytes
// of the file are in use per byte of record data in st: pages that are
// neither free nor pending, over the records' encoded size and the retired
// batches' size (their pages are in use until reclaimed). It reflects
// what the commits before left on disk: batch framing, leaf pages' unused
// tails, branch pages. The dead-letter bucket's pages (dlDisk, see
// dlPages) are left out: MaxBytes does not count them.
func diskRatio(tx *bolt.Tx, st state, dlDisk uint64) float64 {
	if data := st.bytes + st.retired; data >= ratioMinBytes {
		used := uint64(max(usedBytes(tx), 0))
		return max(float64(used-min(used, dlDisk))/float64(data), 1)
	}
	return 1
}

// usedBytes is the part of the file in pages that hold data: bbolt's high
// water mark less its free and pending pages, as the last write
// transaction left them.
func usedBytes(tx *bolt.Tx) int64 {
	s := tx.DB().Stats()
	return tx.Size() - int64(s.FreePageN+s.PendingPageN)*int64(tx.DB().Info().PageSize)
}

// recordBudget is how many bytes of record data fit in MaxBytes on disk at
// the given ratio; ok is false when there is no bound.
func (b *Buffer) recordBudget(ratio float64) (budget uint64, ok bool) {
	if b.opts.MaxBytes <= 0 {
		return 0, false
	}
	return uint64(float64(b.opts.MaxBytes) / ratio), true
}

// room is how many bytes of appends one commit may take: with Block, what
// is left below MaxBytes; otherwise unbounded (-1).
func (b *Buffer) room() int64 {
	if b.opts.WhenFull != Block {
		return -1
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	budget, ok := b.recordBudget(b.ratio)
	if !ok {
		return -1
	}
	return int64(budget - min(budget, b.st.bytes))
}

// full reports whether appends must wait (Block policy at MaxBytes).
func (b *Buffer) full() bool {
	return b.room() == 0
}

// commitLoop is the only writer. It owns every write transaction.
func (b *Buffer) commitLoop() {
	defer close(b.done)
	batch := make([]appendReq, 0, b.opts.MaxBatch)
	var ageTick <-chan time.Time
	if b.opts.MaxAge > 0 {
		t := time.NewTicker(min(b.opts.MaxAge/10, time.Second) + time.Millisecond)
		defer t.Stop()
		ageTick = t.C
	}
	lastCommit := time.Time{}
	for {
		batch = batch[:0]
		reqs := b.reqs
		if b.full() {
			reqs = nil // Block: leave appends queued until a release makes room
		}
		stopping, woken := false, false
		select {
		case r := <-reqs:
			batch = append(batch, r)
		case <-b.wake:
			woken = true
		case <-ageTick:
		case <-b.stop:
			stopping = true
		}
		if d := releaseInterval - time.Since(lastCommit); woken && reqs != nil && d > 0 {
			// A release or dead letter alone is not urgent (lost in a
			// crash, records are only delivered twice): gather them for
			// one write, unless an append comes to carry them. (With
			// Block at max_bytes, reqs is nil: the release is what lets
			// ingest go on, and is written at once.)
			t := time.NewTimer(d)
			select {
			case r := <-reqs:
				batch = append(batch, r)
			case <-t.C:
			case <-b.stop:
				stopping = true
			}
			t.Stop()
		}
		if d := b.opts.SyncInterval - time.Since(lastCommit); d > 0 && !stopping && len(batch) > 0 {
			select { // gather more for one write, at most once per interval
			case <-time.After(d):
			case <-b.stop:
				stopping = true
			}
		}
		if reqs != nil {
			batch = drain(b.reqs, batch, b.opts.MaxBatch, b.room())
		}
		b.commit(batch)
		lastCommit = time.Now()
		if stopping {
			// Close has made Append refuse new records; commit those that
			// were queued before it.
			for len(b.reqs) > 0 {
				b.commit(drain(b.reqs, batch[:0], b.opts.MaxBatch, -1))
			}
			return
		}
	}
}

// drain takes queued appends into batch, up to max of them and, if budget
// is not negative, until their bytes reach budget.
func drain(reqs chan appendReq, batch []appendReq, max int, budget int64) []appendReq {
	var size int64
	for _, r := range batch {
		size += int64(len(r.val))
	}
	for len(batch) < max && (budget < 0 || size < budget) {
		select {
		case r := <-reqs:
			batch = append(batch, r)
			size += int64(len(r.val))
		default:
			return batch
		}
	}
	return batch
}

// commit writes one transaction: dead letters, the appended batch, the
// release, the limits, then reclaim of retired batches.
func (b *Buffer) commit(batch []appendReq) {
	b.mu.Lock()
	st := b.st.clone()
	ratio := b.ratio
	credit := b.credit
	dl := b.dl
	releaseTo := b.releaseTo
	var dead map[uint64]deadReq
	if len(b.toDead) > 0 {
		dead, b.toDead = b.toDead, map[uint64]deadReq{}
	}
	ops := b.deadOps
	b.deadOps = nil
	b.mu.Unlock()
	queued := 0
	for _, r := range batch {
		queued += len(r.val)
	}
	b.unreserve(queued) // in the committer's hands now
	dlLimit, dlBounded := uint64(b.opts.MaxDeadLetterBytes), b.opts.MaxDeadLetterBytes > 0

	budget, bounded := b.recordBudget(ratio)
	limits := bounded && b.opts.WhenFull == DropOldest && st.bytes > budget || b.expired(st)
	limits = limits || dlBounded && st.dlBytes > dlLimit
	if len(batch) == 0 && len(dead) == 0 && len(ops) == 0 && releaseTo < st.head && !limits {
		return
	}
	var dropped [3]uint64 // max_bytes, max_age, dead_letter_limit
	err := b.db.Update(func(tx *bolt.Tx) error {
		batches := tx.Bucket(bucketBatches)
		batches.FillPercent = 0.95 // keys only ever grow: pack pages
		if bounded {
			dl.measure(tx, st, time.Now())
			ratio = diskRatio(tx, st, dl.estimate(st))
			budget, _ = b.recordBudget(ratio)
		}
		for _, seq := range slices.Sorted(maps.Keys(dead)) { // in key order: packed pages
			if err := deadLetterTx(tx, &st, seq, dead[seq]); err != nil {
				return err
			}
		}
		// The appended records go in batches of about maxBatchBytes: big
		// enough to spread bbolt's per-key cost over many records, small
		// enough that a leaf page holds several, so each commit rewrites
		// little besides the new data.
		recs := make([][]byte, 0, len(batch))
		size := 0
		var appended uint64 // batch value bytes written
		for i, r := range batch {
			if r.val != nil {
				recs = append(recs, r.val)
				size += len(r.val)
			}
			if len(recs) == 0 || size < maxBatchBytes && i < len(batch)-1 {
				continue
			}
			val := appendBatch(make([]byte, 0, batchSize(recs)), recs)
			if err := batches.Put(seqKey(st.next), val); err != nil {
				return err
			}
			appended += uint64(len(val))
			st.next += uint64(len(recs))
			st.count += uint64(len(recs))
			st.bytes += uint64(size)
			recs, size = recs[:0], 0
		}
		for _, op := range ops { // after the appends: their callbacks count on the sequence numbers
			if err := op.fn(tx, &st); err != nil {
				return err
			}
		}
		if releaseTo >= st.head {
			if _, err := dropPrefix(tx, &st, releaseTo); err != nil {
				return err
			}
		}
		if b.opts.MaxAge > 0 && st.count > 0 {
			cutoff := b.opts.Now().Add(-b.opts.MaxAge)
			n, err := dropWhile(tx, &st, func(raw []byte, _ uint64) bool { return recordTime(raw).Before(cutoff) })
			if err != nil {
				return err
			}
			dropped[1] = n
		}
		if bounded && st.bytes > budget && b.opts.WhenFull == DropOldest {
			excess := st.bytes - budget
			var freed uint64
			n, err := dropWhile(tx, &st, func(raw []byte, _ uint64) bool {
				if freed >= excess {
					return false
				}
				freed += uint64(len(raw))
				return true
			})
			if err != nil {
				return err
			}
			dropped[0] = n
		}
		if dlBounded {
			n, err := limitDeadLetters(tx, &st, dlLimit)
			if err != nil {
				return err
			}
			dropped[2] = n
		}
		dl.stale = dl.stale || len(dead) > 0 || len(ops) > 0 || dropped[2] > 0
		// Make room for what was appended from retired batches (less what
		// earlier deletions left free), and bring the live and retired
		// data within the budget.
		want := appended - min(appended, credit)
		if bounded && st.bytes+st.retired > budget {
			want = max(want, st.bytes+st.retired-budget)
		}
		freed, err := reclaim(tx, &st, want)
		if err != nil {
			return err
		}
		credit = credit + freed - min(credit+freed, appended)
		st.dropBytes += dropped[0]
		st.dropAge += dropped[1]
		return st.store(tx.Bucket(bucketMeta))
	})
	if err != nil {
		err = fmt.Errorf("commit to buffer %s: %w", b.path, err)
		b.log.Error("buffer: commit failed", "err", err, "records", len(batch))
		b.mu.Lock()
		for seq, r := range dead { // try again with the next commit
			if _, ok := b.toDead[seq]; !ok {
				b.toDead[seq] = r
			}
		}
		b.mu.Unlock()
		for _, r := range batch {
			r.done(0, err)
		}
		for _, op := range ops {
			op.done <- err
		}
		return
	}
	b.mu.Lock()
	// A backlog has drained when what is left is small enough to copy in
	// a moment: then a compaction may give the file's space back.
	seq0 := b.st.next
	drained := b.st.count > 0 && st.count == 0 || b.st.bytes > drainedBytes && st.bytes <= drainedBytes
	b.st = st
	b.ratio = ratio
	b.credit = credit
	b.dl = dl
	b.commits++
	// Wake readers: new records, or records gone (released, dropped,
	// dead-lettered) that a reader may be waiting behind.
	close(b.changed)
	b.changed = make(chan struct{})
	logDrop := dropped != [3]uint64{} && time.Since(b.lastDrop) > 10*time.Second
	if logDrop {
		b.lastDrop = time.Now()
	}
	b.mu.Unlock()
	if logDrop {
		b.log.Warn("buffer: limit reached; oldest records dropped",
			"dropped_max_bytes", dropped[0], "dropped_max_age", dropped[1], "dropped_dead_letter_limit", dropped[2],
			"total_max_bytes", st.dropBytes, "total_max_age", st.dropAge, "total_dead_letter_limit", st.dropDLLimit,
			"max_bytes", b.opts.MaxBytes, "max_age", b.opts.MaxAge, "max_dead_letter_bytes", b.opts.MaxDeadLetterBytes)
	}
	for _, op := range ops {
		op.done <- nil
	}
	seq := seq0
	for _, r := range batch {
		if r.val == nil { // a flush barrier
			r.done(0, nil)
			continue
		}
		r.done(seq, nil)
		seq++
	}
	if drained {
		b.compactIfSparse()
	}
}

// flush waits until everything requested before it (appends, releases,
// dead letters) is committed.
func (b *Buffer) flush(ctx context.Context) error {
	ch := make(chan error, 1)
	b.closeMu.RLock()
	if b.closed {
		b.closeMu.RUnlock()
		return ErrClosed
	}
	b.reqs <- appendReq{done: func(_ uint64, err error) { ch <- err }}
	b.closeMu.RUnlock()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// expired reports whether the head record is older than MaxAge.
func (b *Buffer) expired(st state) bool {
	if b.opts.MaxAge <= 0 || st.count == 0 {
		return false
	}
	var t time.Time
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketBatches).Cursor()
		for k, v := seekBatch(c, st.head); k != nil; k, v = c.Next() {
			recs, _, _ := parseBatch(v)
			base := binary.BigEndian.Uint64(k)
			for i, raw := range recs {
				if base+uint64(i) >= st.head && len(raw) > 0 {
					t = recordTime(raw)
					return nil
				}
			}
		}
		return nil
	})
	return !t.IsZero() && t.Before(b.opts.Now().Add(-b.opts.MaxAge))
}

// dropPrefix removes every record up to and including through, retiring
// the batches that end there and moving the head. It returns how many live
// records it removed.
func dropPrefix(tx *bolt.Tx, st *state, through uint64) (uint64, error) {
	return dropWhile(tx, st, func(_ []byte, seq uint64) bool { return seq <= through })
}

// dropWhile removes live records from the head for as long as drop says so,
// moving the head past them. The batches it empties are retired, not
// deleted: reclaim deletes them as new data needs their space. A batch
// whose framing is broken is dead-lettered whole on the way, never
// dropped uncounted. It returns how many records it removed.
func dropWhile(tx *bolt.Tx, st *state, drop func(raw []byte, seq uint64) bool) (uint64, error) {
	batches := tx.Bucket(bucketBatches)
	var removed uint64
	var dead [][]byte // broken batches, dead-lettered
	c := batches.Cursor()
	stopped := false
	for k, v := seekBatch(c, st.head); k != nil && !stopped; k, v = c.Next() {
		base := binary.BigEndian.Uint64(k)
		recs, count, perr := parseBatch(v)
		if framingBroken(recs, count, perr) {
			if err := deadLetterBatch(tx, st, k, v, recs, perr, time.Now()); err != nil {
				return removed, err
			}
			st.head = batchEnd(batches, base, st.next)
			dead = append(dead, k)
			continue
		}
		for i, raw := range recs {
			seq := base + uint64(i)
			if seq < st.head || len(raw) == 0 {
				continue
			}
			if !drop(raw, seq) {
				stopped = true
				break
			}
			removed++
			st.count--
			st.bytes -= uint64(len(raw))
			st.head = seq + 1
		}
		if !stopped {
			st.head = base + uint64(count)
			st.retired += uint64(len(v))
		}
	}
	for _, k := range dead {
		if err := batches.Delete(k); err != nil {
			return removed, err
		}
	}
	if st.count == 0 {
		st.head = st.next
	}
	return removed, nil
}

// reclaim deletes retired batches, oldest first, until want bytes of them
// are gone or none is left, and returns how many bytes it deleted.
//
// Why not delete batches as soon as they are released: bbolt writes its
// whole freelist in every commit, so the pages of a delivered backlog,
// freed at once, would be written again with every commit until new data
// reused them (measured: 10 KB written per record while a backlog of
// 300,000 drained at 30,000/s beside one live sensor). Deleted only as
// fast as new data takes their place, they leave the freelist small, and
// the file does not grow while retired batches remain. A drained backlog
// is given back to the file system by compaction, which leaves retired
// batches behind.
func reclaim(tx *bolt.Tx, st *state, want uint64) (uint64, error) {
	if want == 0 || st.retired == 0 {
		return 0, nil
	}
	batches := tx.Bucket(bucketBatches)
	c := batches.Cursor()
	var gone [][]byte
	var freed uint64
	k, v := c.First()
	for k != nil && freed < want {
		end := st.next
		nk, nv := c.Next()
		if nk != nil {
			end = binary.BigEndian.Uint64(nk)
		}
		if n, ok := batchCount(v); ok { // the next batch may start after a gap
			end = min(end, binary.BigEndian.Uint64(k)+uint64(n))
		}
		if end > st.head { // this batch holds the head: no retired batch is left
			k = nil
			break
		}
		gone = append(gone, k)
		freed += uint64(len(v))
		k, v = nk, nv
	}
	for _, k := range gone {
		if err := batches.Delete(k); err != nil {
			return 0, err
		}
	}
	st.retired -= min(st.retired, freed)
	if k == nil {
		st.retired = 0 // none left before the head
	}
	return freed, nil
}

// batchCount reads the number of records a batch's header announces,
// without checking or framing the rest.
func batchCount(v []byte) (int, bool) {
	if len(v) < 3 || v[0] != batchMagic || v[1] != batchV1 {
		return 0, false
	}
	n, l := binary.Uvarint(v[2:])
	if l <= 0 || n > uint64(len(v)) {
		return 0, false
	}
	return int(n), true
}

// batchEnd is the sequence number after the batch at base: the next
// batch's first, or next if it is the last. It does not trust the batch's
// own header, which may be damaged.
func batchEnd(batches *bolt.Bucket, base, next uint64) uint64 {
	if k, _ := batches.Cursor().Seek(seqKey(base + 1)); k != nil {
		return binary.BigEndian.Uint64(k)
	}
	return next
}

// framingBroken reports whether parseBatch could not frame every record
// (as opposed to a checksum mismatch with sound framing).
func framingBroken(recs [][]byte, count int, err error) bool {
	return err != nil && (count == 0 || len(recs) < count)
}

// recordTime reads an encoded record's receive time without decoding it
// all; the zero time if it cannot.
func recordTime(raw []byte) time.Time {
	if len(raw) < 4 {
		return time.Time{}
	}
	ns, n := binary.Varint(raw[3:])
	if n <= 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }
