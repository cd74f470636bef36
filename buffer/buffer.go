// Package buffer is ferry's durable FIFO: an ordered log of records in one
// bbolt file.
//
// Durability: Append gives a record its sequence number, keeps it in memory
// (the tail, see tail.go) and returns; Read serves it from there at once.
// One goroutine, the committer, writes records of the tail as one batch in
// one bbolt transaction with one fsync (group commit). Each record's
// callback runs once the record is durable, in append order; only then may
// its source be acknowledged. Durable means:
//
//   - With WriteDelay 0 (strict): written and fsynced. The committer commits
//     as soon as records wait (at most once per SyncInterval if set: fewer,
//     larger writes, more latency). Whatever Kafka says, every record is on
//     disk before its callback.
//   - With WriteDelay above 0: written and fsynced, or delivered (Release or
//     Remove) first, whichever comes first. A record waits in memory up to
//     the write delay (WriteDelay, adapted to how fast deliveries come, at
//     most 8 times it; see Options.WriteDelay); at the deadline every
//     record of the tail not delivered yet is written in one commit, and so
//     is the tail once MaxTailRecords wait. A record delivered before its
//     deadline is never written at all: with a healthy uplink the disk sees
//     nothing but a few meta pages now and then. A crash loses the tail,
//     which was not acknowledged: its source sends it again. (With Block
//     at MaxBytes, the tail waits in memory until there is room.)
//
// Order: records get sequence numbers that only grow, across restarts too,
// and the file's ID (random, kept by compaction and salvage, new for a new
// file) names the log they belong to: (ID, Seq) is unique forever. With
// WriteDelay, sequence numbers are reserved on disk a range ahead
// (reserveStep), so a record delivered from memory and never written keeps
// its number unique after a restart: a new process starts above the
// reserved range, which leaves a gap in the numbers. With WriteDelay 0,
// Read serves only records on disk and reserves nothing (a file last used
// with a delay still starts above its reservation). Read returns records
// in sequence order. Records leave the buffer through
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
// Memory: the tail is bounded by count (QueueSize) and by bytes
// (QueueBytes); Append blocks beyond either, and the committer then writes
// the tail without waiting for the deadline (as far as Block at MaxBytes
// leaves room).
//
// Cost does not depend on depth: counters live in a meta bucket updated in
// the same transaction as the records, the head is found with one cursor
// seek, and a release only moves the head: the batches it empties are
// retired, and deleted as new records need their space (see reclaim).
//
// The buffer knows nothing of MQTT or Kafka.
package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// maxBatchBytes is the size of record data at which a commit starts a new
// batch value.
var maxBatchBytes = 1024

// defaultMaxDeadLetterBytes is Options.MaxDeadLetterBytes' default.
const defaultMaxDeadLetterBytes = 64 << 20

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
	keyDropCorrupt = []byte("dropped_corrupt")
	keyClockSteps  = []byte("clock_steps")
	keyLineage     = []byte("lineage")
	keyDLRecords   = []byte("dead_letter_records")
	keyDLBytes     = []byte("dead_letter_bytes")
	keyRetired     = []byte("retired_bytes")
	keyReserved    = []byte("reserved_seq")
)

// reserveStep is how many sequence numbers are reserved on disk at a
// time: the gap a restart leaves in the numbers at most, and at 15,000
// records a second one small commit every few minutes.
const reserveStep = 1 << 22

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
	// QueueSize is how many records the tail holds at most (appended, not
	// durable yet); Append blocks beyond it (backpressure). Default 16384.
	QueueSize int
	// QueueBytes bounds the encoded bytes of the tail: Append blocks while
	// its record would take them above QueueBytes, unless the tail is
	// empty, so a record larger than QueueBytes still goes through, alone.
	// Default 16 MiB.
	QueueBytes int
	// SyncInterval, if above zero, makes the committer commit (and fsync) at
	// most once per interval. Callbacks still wait for the fsync. It
	// applies with WriteDelay 0.
	SyncInterval time.Duration
	// WriteDelay, if above zero, is how long a record may wait in memory
	// for its delivery before a commit writes it; its callback runs on
	// delivery or on the commit, whichever comes first (see the package
	// comment). 0: every record is written before its callback (strict).
	//
	// It adapts, within WriteDelay and 8 times it: a delivery from memory
	// sets it to twice that record's time in the tail (a slow link's
	// records are still delivered, not written), and while records reach
	// their deadline undelivered commit after commit (Kafka is not
	// acknowledging) it doubles: an outage is buffered in fewer, larger
	// commits (fewer bytes written per record).
	WriteDelay time.Duration
	// MaxTailRecords, with WriteDelay, makes the committer write the tail
	// as soon as this many records wait in it unacknowledged (not durable,
	// or durable behind one that is not), whatever their deadline.
	// A source that holds only so many unacknowledged messages (MQTT's
	// Receive Maximum) stalls beyond that: keep it below. 0: no bound but
	// QueueSize.
	MaxTailRecords int
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
	// Now is the wall clock for MaxAge; a step in it (against the
	// monotonic clock) is detected and not counted as age. Default
	// time.Now.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.LockTimeout <= 0 {
		o.LockTimeout = time.Second
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 16384
	}
	if o.QueueBytes <= 0 {
		o.QueueBytes = 16 << 20
	}
	if o.MaxDeadLetterBytes == 0 {
		o.MaxDeadLetterBytes = defaultMaxDeadLetterBytes
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
	Records uint64 // records held, on disk and in memory
	Bytes   uint64 // encoded size of the records held
	// TailRecords and TailBytes are the part of Records and Bytes held in
	// memory only: appended, not written (nor delivered) yet.
	TailRecords, TailBytes uint64
	FirstSeq               uint64 // sequence number of the head; 0 when empty
	// OldestAge is how long the head, the oldest record held, has waited
	// since it was received, as MaxAge counts it (a forward step of the
	// wall clock since is not age); for a head held in memory only, since
	// it was appended. 0 when the buffer is empty or the head's receive
	// time is unknown (received while the clock was not synchronized).
	// It is kept in memory: reading it costs no read transaction.
	OldestAge time.Duration
	// LastSeq is the highest sequence number given out; 0 if none. After
	// a restart with WriteDelay it is the top of the last run's
	// reservation: every number below may have been given out.
	LastSeq uint64
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
	// Full reports that appends wait for room: WhenFull is Block and the
	// buffer is at MaxBytes.
	Full bool
	// CommitError is why the last commit failed, while commits fail
	// ("" once one succeeds). Records wait in memory meanwhile, not
	// acknowledged: the broker holds the rest. CommitFailures counts the
	// failed commits since Open.
	CommitError    string
	CommitFailures uint64
	// DiskFull reports that the last commit failed for want of space on
	// the file system (ENOSPC, EDQUOT).
	DiskFull bool
	// Recreated counts the times the buffer found its file deleted or
	// replaced while open and wrote it to its path again (see checkPath).
	Recreated uint64
	// CorruptFiles is how many damaged buffer files lie moved aside next to
	// this one (path.corrupt-*, see MoveAside), as found at Open (and after
	// OpenOrMoveAside removed those it may, see pruneAside): unless
	// the salvage failed, their readable records were salvaged into the
	// buffer that replaced each; what could not be read is counted in
	// Dropped[DropCorrupt] when the damaged file's counters could be read.
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
	// DropCorrupt: records of a damaged buffer file that its salvage could
	// not read (the file's own count of records, less those salvaged and
	// those set aside as dead letters).
	DropCorrupt = "corrupt"
)

// state is what the meta bucket holds, mirrored in memory. Copies share
// deadLettered: clone before changing a copy.
type state struct {
	next, head, count, bytes       uint64
	dropBytes, dropAge, dropPurged uint64
	dropDLLimit, dropDLPurged      uint64
	// dropCorrupt: records of a damaged file that salvage could not read.
	dropCorrupt uint64
	// retired is the size of the batch values before the head: every
	// record in them released or dropped, the batches not yet deleted
	// (see reclaim).
	retired uint64
	// dlRecords and dlBytes are what the dead-letter bucket holds.
	dlRecords, dlBytes uint64
	// reserved: sequence numbers below it may have been given out (see
	// reserveStep); the next process starts at it.
	reserved uint64
	// deadLettered counts records dead-lettered, ever, by reason.
	deadLettered map[Reason]uint64
	id           string
	// lineage names the history of this file that holds every record it
	// ever held: a new buffer starts one, and so do a salvage that may
	// have left records behind, one made by hand and an older copy put
	// back (see forked); compaction and MoveAside's complete salvage
	// carry it over (see pruneAside).
	lineage string
	// steps are the forward steps of the wall clock that records still
	// held were received before (see clock.go).
	steps []clockStep
}

func (s state) clone() state {
	s.deadLettered = maps.Clone(s.deadLettered)
	s.steps = slices.Clone(s.steps)
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
		{keyDLRecords, &s.dlRecords}, {keyDLBytes, &s.dlBytes}, {keyReserved, &s.reserved},
		{keyDropCorrupt, &s.dropCorrupt},
	}
}

// dropped is the drop counters by reason.
func (s *state) dropped() map[string]uint64 {
	return map[string]uint64{DropMaxBytes: s.dropBytes, DropMaxAge: s.dropAge, DropPurged: s.dropPurged,
		DropDeadLetterLimit: s.dropDLLimit, DropDeadLetterPurged: s.dropDLPurged, DropCorrupt: s.dropCorrupt}
}

func (s *state) load(meta *bolt.Bucket) {
	for _, f := range s.fields() {
		if v := meta.Get(f.k); len(v) == 8 {
			*f.v = binary.BigEndian.Uint64(v)
		}
	}
	s.id = string(meta.Get(keyID))
	s.lineage = string(meta.Get(keyLineage))
	s.steps = decodeSteps(meta.Get(keyClockSteps))
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
	// Damage leaves the byte count off: a broken batch's records that do
	// not frame are not counted out, and a record whose length a bit flip
	// changed is counted out at its new size. No record left, no bytes
	// left.
	if s.count == 0 {
		s.bytes = 0
	}
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
	if s.lineage != "" {
		if err := meta.Put(keyLineage, []byte(s.lineage)); err != nil {
			return err
		}
	}
	if len(s.steps) > 0 || meta.Get(keyClockSteps) != nil {
		if err := meta.Put(keyClockSteps, encodeSteps(s.steps)); err != nil {
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
	file *os.File     // db's file, owned by db; swapped with it
	db   *bolt.DB
	path string
	opts Options
	log  *slog.Logger

	wake     chan struct{} // one slot: there may be work for the committer
	stop     chan struct{} // closed by Close
	quit     chan struct{} // closed first thing in Close: blocked appends give up
	quitOnce sync.Once
	done     chan struct{} // closed when the committer has exited

	closeMu sync.RWMutex // held shared while sending to reqs; exclusive to close
	closed  bool

	qmu      sync.Mutex
	queued   int           // encoded bytes of the tail's records (QueueBytes)
	queuedN  int           // the tail's records (QueueSize)
	dequeued chan struct{} // if not nil, an append waits: closed when the tail shrinks
	blocked  atomic.Bool   // an append waits for room in the tail: commit it now

	// mapped is the bytes of records that readers and the committer went
	// through in the file's memory map since the last unmapPages (see
	// unmapEvery): one count, as one unmapPages drops every page.
	mapped atomic.Int64

	fireMu  sync.Mutex // held while callbacks run: one caller at a time keeps them in order
	fireBuf []entry    // guarded by fireMu: the entries being fired
	born    time.Time  // the monotonic clock of entry.at

	// credit is the committer's own: bytes of retired batches deleted
	// beyond what appends have taken since, so free pages bbolt still has.
	credit uint64
	// dl is the committer's own: the pages the dead-letter bucket takes.
	dl dlPages

	mu        sync.Mutex         // guards the fields below
	st        state              // as on disk
	next      uint64             // the next sequence number to give out; st.next <= next <= st.reserved, mostly
	tl        tail               // records not durable yet
	writing   [2]uint64          // first and last sequence number of the commit under way; 0 0: none
	hold      chan struct{}      // if not nil, appends wait until it is closed (a replay takes sequence numbers)
	waiting   bool               // a reader waits on changed
	fireQ     []entry            // durable entries taken off the tail, in order, for settle to fire
	holdFire  bool               // the file was found unlinked after a commit and could not be written again: fireQ waits
	deadNow   map[uint64]deadReq // the dead letters the commit under way applies
	wakeAt    time.Duration      // when the committer wakes by itself (born's clock); -1: only when signalled
	delay     time.Duration      // the write delay in force (see Options.WriteDelay)
	delivered bool               // records of the tail were delivered since the last commit that wrote the tail
	ratio     float64            // disk bytes in use per record byte, as last measured
	headAt    time.Time          // the head record's receive time (see headTime)
	commits   uint64
	corrupt   int                    // files moved aside next to path, at Open or after pruneAside
	recreated uint64                 // times the file was written to path again (see checkPath)
	lim       atomic.Pointer[Limits] // opts' limits, or what SetLimits set since
	releaseTo uint64                 // Release target not yet applied
	toRemove  []uint64               // Remove requests not yet applied
	toDead    map[uint64]deadReq     // DeadLetter requests not yet applied
	deadOps   []deadOp               // replays and purges of dead letters not yet applied
	changed   chan struct{}          // closed and replaced when records come or go and a reader waits
	lastDrop  time.Time              // last time a drop was logged

	fail  commitFailure // the commits failing now, if they do
	clock clockWatch    // the committer's last look at the clocks

	damaged    chan struct{} // closed by markDamaged
	damage     error         // what markDamaged found
	damageOnce sync.Once
}

// Open opens or creates the buffer file at path (mode 0600, parent
// directories 0700). It fails fast with ErrLocked if another process has it
// open. It checks the whole file's structure before it trusts it (see
// checkFile), which reads about the whole file: 120-240 ms for 270 MB
// from the page cache, as measured on the development machine; from a
// cold SD card, as long as the card takes to read it. A file that fails
// the check, or that a buffer met damage in while running (see Damaged),
// is refused with ErrCorruptFile (OpenOrMoveAside moves it aside). A
// complete salvage that a crash left at path.salvage with no file at path
// is put in place first; if that rename fails, Open fails rather than
// start an empty buffer in its place.
func Open(path string, opts Options) (*Buffer, error) {
	opts.setDefaults()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open buffer %s: %w", path, err)
	}
	if err := adoptSalvage(path, opts.Logger); err != nil {
		return nil, fmt.Errorf("open buffer %s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err == nil && fi.Size() == 0 {
		opts.Logger.Warn("buffer: the buffer file is empty (0 bytes, not a database); starting a new buffer in it", "path", path)
	}
	existed := err == nil && fi.Size() > 0
	db, file, err := openBolt(path, &bolt.Options{Timeout: opts.LockTimeout, FreelistType: bolt.FreelistMapType})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open buffer %s: %w (is another ferry running on it?)", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open buffer %s: %w", path, err)
	}
	if err := checkFile(db, path); err != nil {
		db.Close()
		return nil, fmt.Errorf("open buffer %s: %w", path, err)
	}
	if err := damageMarked(path); err != nil {
		if existed {
			db.Close()
			return nil, fmt.Errorf("open buffer %s: %w", path, err)
		}
		os.Remove(DamageMark(path)) // the marked file is gone: a new one starts
	}
	removeLeftovers(path, opts.Logger)
	b := &Buffer{
		db:      db,
		file:    file,
		path:    path,
		opts:    opts,
		log:     opts.Logger,
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
		toDead:  map[uint64]deadReq{},
		changed: make(chan struct{}),
		damaged: make(chan struct{}),
		st:      state{next: 1, head: 1},
		ratio:   1,
		born:    time.Now(),
		wakeAt:  -1,
		delay:   opts.WriteDelay,
	}
	err = guard(func() error {
		return db.Update(func(tx *bolt.Tx) error {
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
			if b.st.lineage != "" && forked(path, b.st.lineage, b.st.next) {
				b.log.Warn("buffer: the buffer is older than a damaged file moved aside from its lineage (a copy put back?); the moved-aside files are kept", "path", path, "next_seq", b.st.next)
				b.st.lineage = ""
			}
			if b.st.lineage == "" {
				if b.st.lineage, err = newID(); err != nil {
					return err
				}
			}
			if err := checkLastBatch(batches, b.st.next); err != nil {
				return err
			}
			b.headAt = headTime(tx, b.st)
			b.next = max(b.st.next, b.st.reserved)
			if opts.WriteDelay > 0 {
				b.st.reserved = b.next + reserveStep
			}
			return b.st.store(meta)
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open buffer %s: %w", path, err)
	}
	b.corrupt = len(CorruptFiles(path))
	lim := opts.limits()
	b.lim.Store(&lim)
	b.makeReserve()
	go b.commitLoop()
	return b, nil
}

// Path returns the file the buffer lives in.
func (b *Buffer) Path() string { return b.path }

func (b *Buffer) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Stats returns the buffer's counters.
func (b *Buffer) Stats() Stats {
	full := b.full() // takes b.mu itself
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Stats{
		Full:              full,
		Records:           b.st.count + uint64(b.tl.pending),
		Bytes:             b.st.bytes + b.tl.pendingBytes,
		TailRecords:       uint64(b.tl.pending),
		TailBytes:         b.tl.pendingBytes,
		LastSeq:           b.next - 1,
		DeadLettered:      maps.Clone(b.st.deadLettered),
		DeadLetterRecords: b.st.dlRecords,
		DeadLetterBytes:   b.st.dlBytes,
		Dropped:           b.st.dropped(),
		ID:                b.st.id,
		Commits:           b.commits,
		CorruptFiles:      b.corrupt,
		CommitFailures:    b.fail.count,
		Recreated:         b.recreated,
		DiskFull:          b.fail.diskFull,
	}
	if b.fail.err != nil {
		s.CommitError = b.fail.err.Error()
	}
	if b.st.count > 0 {
		s.FirstSeq = b.st.head
		if !b.headAt.IsZero() {
			s.OldestAge = max(b.opts.Now().Sub(b.headAt), 0)
		}
	} else if e := b.tl.firstPending(); e != nil {
		s.FirstSeq = e.seq
		s.OldestAge = max(time.Since(b.born)-e.at, 0)
	}
	return s
}

// Close stops accepting appends, writes the tail and closes the file.
// The tail's callbacks have all been called, or are being called by a
// caller of Release or Remove, when it returns. Blocked readers return ErrClosed.
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
	if err := b.Damage(); err != nil {
		// A transaction that met the damage may have left bbolt's lock
		// held, so closing could wait for ever: the file stays open
		// until the process exits, which it should now.
		return fmt.Errorf("close buffer %s: %w", b.path, err)
	}
	b.dbMu.Lock()
	defer b.dbMu.Unlock()
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("close buffer %s: %w", b.path, err)
	}
	return nil
}
