// Package buffer is ferry's durable FIFO: an ordered log of records in one
// bbolt file.
//
// Durability: Append queues a record and returns; one goroutine, the
// committer, writes everything queued so far in one bbolt transaction and one
// fsync (group commit), then calls each appender's callback, in append order.
// A callback with a nil error means the record is on disk and survives a
// crash or power cut; only then may its source be acknowledged.
//
// Order: records get sequence numbers that only grow, across restarts too.
// Read returns records in sequence order. Records leave the buffer only
// through Release, which removes a prefix: the caller says "everything up to
// and including seq is delivered". A stored record that cannot be decoded is
// moved to a quarantine bucket (counted, logged), never skipped silently.
//
// The buffer knows nothing of MQTT or Kafka.
package buffer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrClosed is returned by operations on a closed buffer.
var ErrClosed = errors.New("buffer closed")

// ErrLocked is returned (wrapped) by Open when another process holds the file.
var ErrLocked = errors.New("buffer file is locked by another process")

var (
	bucketRecords    = []byte("records")
	bucketMeta       = []byte("meta")
	bucketQuarantine = []byte("quarantine")

	keyNextSeq     = []byte("next_seq")
	keyCount       = []byte("count")
	keyBytes       = []byte("bytes")
	keyQuarantined = []byte("quarantined")
)

// Options tune a buffer. The zero value is a sensible default.
type Options struct {
	// LockTimeout is how long Open waits for another process's lock on the
	// file before failing with ErrLocked. Default 1s.
	LockTimeout time.Duration
	// MaxBatch is the most records written in one transaction. Default 4096.
	MaxBatch int
	// QueueSize is how many appends may wait for the committer; Append blocks
	// beyond it (backpressure). Default 8192.
	QueueSize int
	// Logger receives quarantine and commit-failure events. Default: discard.
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.LockTimeout <= 0 {
		o.LockTimeout = time.Second
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 4096
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 8192
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Stats is a snapshot of the buffer's counters. It costs nothing to take:
// the counters are kept, not recomputed.
type Stats struct {
	Records     uint64 // records held
	Bytes       uint64 // encoded size of the records held
	FirstSeq    uint64 // sequence number of the head; 0 when empty
	LastSeq     uint64 // highest sequence number ever assigned; 0 if none
	Quarantined uint64 // records moved to quarantine since the file was created
	Commits     uint64 // write transactions since Open
}

// Buffer is a durable FIFO of records. It is safe for concurrent use.
type Buffer struct {
	db   *bolt.DB
	path string
	opts Options
	log  *slog.Logger

	reqs chan appendReq
	wake chan struct{} // one slot: Release or Quarantine has work for the committer
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the committer has exited

	closeMu sync.RWMutex // held shared while sending to reqs; exclusive to close
	closed  bool

	mu          sync.Mutex // guards the fields below
	nextSeq     uint64
	firstSeq    uint64 // head's sequence number, == nextSeq when empty
	count       uint64
	bytes       uint64
	quarantined uint64
	commits     uint64
	releaseTo   uint64              // Release target not yet applied
	toQuar      map[uint64]struct{} // Quarantine requests not yet applied
	changed     chan struct{}       // closed when records are appended
}

type appendReq struct {
	val  []byte
	done func(seq uint64, err error)
}

// Open opens or creates the buffer file at path (mode 0600, parent
// directories 0700). It fails fast with ErrLocked if another process has it
// open. Cost does not depend on how many records the file holds.
func Open(path string, opts Options) (*Buffer, error) {
	opts.setDefaults()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open buffer %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout})
	if errors.Is(err, bolt.ErrTimeout) {
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
		done:    make(chan struct{}),
		toQuar:  map[uint64]struct{}{},
		changed: make(chan struct{}),
		nextSeq: 1,
	}
	err = db.Update(func(tx *bolt.Tx) error {
		recs, err := tx.CreateBucketIfNotExists(bucketRecords)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketQuarantine); err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyNextSeq); v != nil {
			b.nextSeq = getUint(meta, keyNextSeq)
			b.count = getUint(meta, keyCount)
			b.bytes = getUint(meta, keyBytes)
			b.quarantined = getUint(meta, keyQuarantined)
		}
		b.firstSeq = b.nextSeq
		if k, _ := recs.Cursor().First(); k != nil {
			b.firstSeq = binary.BigEndian.Uint64(k)
		}
		if k, _ := recs.Cursor().Last(); k != nil && binary.BigEndian.Uint64(k) >= b.nextSeq {
			return fmt.Errorf("meta next_seq %d is not above the last record %d", b.nextSeq, binary.BigEndian.Uint64(k))
		}
		return nil
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
// blocks while the queue is full, and fails with ErrClosed after Close.
func (b *Buffer) Append(rec *Record, done func(seq uint64, err error)) error {
	val := appendEncoded(make([]byte, 0, 64+len(rec.Topic)+len(rec.Payload)), rec)
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	b.reqs <- appendReq{val: val, done: done}
	return nil
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

// Read returns up to max records with sequence numbers above after, in
// order, appending them to dst[:0]. It waits until at least one such record
// exists, ctx is done (ctx.Err()) or the buffer is closed (ErrClosed).
// Records that cannot be decoded are quarantined and not returned.
func (b *Buffer) Read(ctx context.Context, after uint64, max int, dst []Record) ([]Record, error) {
	dst = dst[:0]
	for {
		b.mu.Lock()
		changed, last := b.changed, b.nextSeq-1
		if after < b.firstSeq-1 {
			after = b.firstSeq - 1 // released meanwhile: start at the head
		}
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
		err := b.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketRecords).Cursor()
			for k, v := c.Seek(seqKey(after + 1)); k != nil && len(dst) < max; k, v = c.Next() {
				seq := binary.BigEndian.Uint64(k)
				scanned = seq
				rec, err := decode(v)
				if err != nil {
					b.Quarantine(seq, err)
					continue
				}
				rec.Seq = seq
				dst = append(dst, rec)
			}
			return nil
		})
		if err != nil {
			if errors.Is(err, bolt.ErrDatabaseNotOpen) {
				return dst, ErrClosed
			}
			return dst, fmt.Errorf("read buffer %s: %w", b.path, err)
		}
		if len(dst) > 0 {
			return dst, nil
		}
		if scanned > after {
			after = scanned // everything scanned was bad; look further
		}
	}
}

// Quarantine moves record seq out of the FIFO into the quarantine bucket,
// where it is kept for inspection: a record that cannot be decoded, or that
// the destination rejects for good. It returns at once; the move is written
// with the next commit, before any Release queued after it.
func (b *Buffer) Quarantine(seq uint64, reason error) {
	b.mu.Lock()
	b.toQuar[seq] = struct{}{}
	b.mu.Unlock()
	b.log.Error("buffer: quarantining record", "path", b.path, "seq", seq, "reason", reason)
	b.signal()
}

// Release removes every record with a sequence number up to and including
// seq: they were delivered. It returns at once; the removal is written with
// the next commit. If it is lost in a crash, the records are read again
// (delivered twice, never lost).
func (b *Buffer) Release(seq uint64) {
	b.mu.Lock()
	if seq > b.releaseTo {
		b.releaseTo = seq
	}
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
		Records:     b.count,
		Bytes:       b.bytes,
		LastSeq:     b.nextSeq - 1,
		Quarantined: b.quarantined,
		Commits:     b.commits,
	}
	if b.count > 0 {
		s.FirstSeq = b.firstSeq
	}
	return s
}

// Close stops accepting appends, commits what is queued (calling its
// callbacks), and closes the file. Blocked readers return ErrClosed.
func (b *Buffer) Close() error {
	b.closeMu.Lock()
	if b.closed {
		b.closeMu.Unlock()
		return nil
	}
	b.closed = true
	b.closeMu.Unlock()
	close(b.stop)
	<-b.done
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("close buffer %s: %w", b.path, err)
	}
	return nil
}

// commitLoop is the only writer. It owns every write transaction.
func (b *Buffer) commitLoop() {
	defer close(b.done)
	batch := make([]appendReq, 0, b.opts.MaxBatch)
	for {
		batch = batch[:0]
		stopping := false
		select {
		case r := <-b.reqs:
			batch = append(batch, r)
		case <-b.wake:
		case <-b.stop:
			stopping = true
		}
	fill:
		for len(batch) < b.opts.MaxBatch {
			select {
			case r := <-b.reqs:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		b.commit(batch)
		if stopping {
			// Close has made Append refuse new records; commit those that
			// were queued before it.
			for len(b.reqs) > 0 {
				batch = batch[:0]
				for len(batch) < b.opts.MaxBatch && len(b.reqs) > 0 {
					batch = append(batch, <-b.reqs)
				}
				b.commit(batch)
			}
			return
		}
	}
}

// commit writes one transaction: quarantines, appends, then the release.
func (b *Buffer) commit(batch []appendReq) {
	b.mu.Lock()
	releaseTo := b.releaseTo
	var quar map[uint64]struct{}
	if len(b.toQuar) > 0 {
		quar, b.toQuar = b.toQuar, map[uint64]struct{}{}
	}
	next, first, count, bytes, nquar := b.nextSeq, b.firstSeq, b.count, b.bytes, b.quarantined
	b.mu.Unlock()

	if len(batch) == 0 && len(quar) == 0 && releaseTo < first {
		return
	}
	keys := make([]byte, 8*len(batch))
	err := b.db.Update(func(tx *bolt.Tx) error {
		recs := tx.Bucket(bucketRecords)
		recs.FillPercent = 0.95 // keys only ever grow: pack pages
		for seq := range quar {
			k := seqKey(seq)
			v := recs.Get(k)
			if v == nil {
				continue // released meanwhile
			}
			if err := tx.Bucket(bucketQuarantine).Put(k, append([]byte(nil), v...)); err != nil {
				return err
			}
			if err := recs.Delete(k); err != nil {
				return err
			}
			count--
			bytes -= uint64(len(v))
			nquar++
		}
		for i, r := range batch {
			k := keys[8*i : 8*i+8]
			binary.BigEndian.PutUint64(k, next)
			if err := recs.Put(k, r.val); err != nil {
				return err
			}
			next++
			count++
			bytes += uint64(len(r.val))
		}
		if releaseTo >= first {
			c := recs.Cursor()
			for k, v := c.First(); k != nil && binary.BigEndian.Uint64(k) <= releaseTo; k, v = c.First() {
				bytes -= uint64(len(v))
				count--
				if err := c.Delete(); err != nil {
					return err
				}
			}
		}
		first = next
		if k, _ := recs.Cursor().First(); k != nil {
			first = binary.BigEndian.Uint64(k)
		}
		meta := tx.Bucket(bucketMeta)
		for _, kv := range []struct {
			k []byte
			v uint64
		}{{keyNextSeq, next}, {keyCount, count}, {keyBytes, bytes}, {keyQuarantined, nquar}} {
			if err := meta.Put(kv.k, binary.BigEndian.AppendUint64(nil, kv.v)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("commit to buffer %s: %w", b.path, err)
		b.log.Error("buffer: commit failed", "err", err, "records", len(batch))
		b.mu.Lock()
		for seq := range quar { // try again with the next commit
			b.toQuar[seq] = struct{}{}
		}
		b.mu.Unlock()
		for _, r := range batch {
			r.done(0, err)
		}
		return
	}
	b.mu.Lock()
	seq0 := b.nextSeq
	b.nextSeq, b.firstSeq, b.count, b.bytes, b.quarantined = next, first, count, bytes, nquar
	b.commits++
	if len(batch) > 0 {
		close(b.changed)
		b.changed = make(chan struct{})
	}
	b.mu.Unlock()
	for i, r := range batch {
		r.done(seq0+uint64(i), nil)
	}
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func getUint(b *bolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}
