package buffer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

const reasonTest Reason = "message_too_large"

// deadLetterWait dead-letters seq and waits for the commit.
func deadLetterWait(t *testing.T, b *Buffer, seq uint64, reason Reason) {
	t.Helper()
	b.DeadLetter(seq, reason, fmt.Errorf("record %d: test", seq))
	if err := b.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// deadLetters lists the dead-letter entries f selects.
func deadLetters(t *testing.T, each func(DeadLetterFilter, func(DeadLetterEntry) error) (uint64, error), f DeadLetterFilter) []DeadLetterEntry {
	t.Helper()
	var got []DeadLetterEntry
	damaged, err := each(f, func(e DeadLetterEntry) error { got = append(got, e); return nil })
	if err != nil || damaged != 0 {
		t.Fatalf("dead letters: %d damaged, %v", damaged, err)
	}
	return got
}

func seqsOf(recs []Record) []uint64 {
	var s []uint64
	for _, r := range recs {
		s = append(s, r.Seq)
	}
	return s
}

// A DeadLetter followed by a Release past the record keeps the record in
// the dead-letter bucket, with its reason and detail; the counts survive a
// restart.
func TestDeadLetterThenReleaseKeepsRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b, 1, 5)
	b.DeadLetter(3, reasonTest, errors.New("too large: 2 MB"))
	b.Release(5) // queued after the dead letter: must not lose it
	if err := b.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := b.Stats()
	if st.Records != 0 || st.DeadLettered[reasonTest] != 1 || st.DeadLetterRecords != 1 || st.DeadLetterBytes == 0 {
		t.Fatalf("stats %+v", st)
	}
	check := func(what string, got []DeadLetterEntry) {
		t.Helper()
		if len(got) != 1 {
			t.Fatalf("%s: %d entries, want 1", what, len(got))
		}
		e := got[0]
		want := inspectRec(3)
		if e.Seq != 3 || e.Reason != reasonTest || e.Detail != "too large: 2 MB" || e.Records != 1 || e.Record == nil ||
			!bytes.Equal(e.Record.Payload, want.Payload) || !e.Record.ReceivedAt.Equal(want.ReceivedAt) || e.Record.Seq != 3 ||
			time.Since(e.DeadLetteredAt) > time.Minute || e.Size != int(st.DeadLetterBytes) {
			t.Fatalf("%s: entry %+v", what, e)
		}
	}
	check("live", deadLetters(t, b.EachDeadLetter, DeadLetterFilter{}))
	b.Close()
	checkCounters(t, path)

	b, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st2 := b.Stats(); st2.DeadLettered[reasonTest] != 1 || st2.DeadLetterRecords != 1 || st2.DeadLetterBytes != st.DeadLetterBytes {
		t.Fatalf("after reopen: %+v", st2)
	}
	b.Close()
	ro := openReadOnlyTest(t, path)
	check("at rest", deadLetters(t, ro.EachDeadLetter, DeadLetterFilter{Reason: reasonTest}))
	if got := deadLetters(t, ro.EachDeadLetter, DeadLetterFilter{Reason: "other"}); len(got) != 0 {
		t.Fatalf("reason filter: %+v", got)
	}
	if got := deadLetters(t, ro.EachDeadLetter, DeadLetterFilter{Seq: 2}); len(got) != 0 {
		t.Fatalf("seq filter: %+v", got)
	}
	if info, err := ro.Info(); err != nil || info.DeadLettered[reasonTest] != 1 || info.DeadLetterRecords != 1 || info.ID == "" {
		t.Fatalf("info %+v, %v", info, err)
	}
}

// The bound on the dead-letter bucket drops the oldest entries and counts
// their records.
func TestDeadLetterLimitDropsOldest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 10; i <= 20; i++ { // records of the same size
		if _, err := b.AppendWait(context.Background(), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	deadLetterWait(t, b, 1, reasonTest)
	one := b.Stats().DeadLetterBytes
	b.Close()

	if b, err = Open(path, Options{MaxDeadLetterBytes: int64(3*one + one/2)}); err != nil {
		t.Fatal(err)
	}
	defer func() { b.Close(); checkCounters(t, path) }()
	for seq := uint64(2); seq <= 6; seq++ {
		deadLetterWait(t, b, seq, reasonTest)
	}
	st := b.Stats()
	if st.DeadLettered[reasonTest] != 6 || st.DeadLetterRecords != 3 || st.DeadLetterBytes != 3*one || st.Dropped[DropDeadLetterLimit] != 3 {
		t.Fatalf("stats %+v, want 6 dead-lettered, 3 held, 3 dropped for the limit", st)
	}
	var seqs []uint64
	for _, e := range deadLetters(t, b.EachDeadLetter, DeadLetterFilter{}) {
		seqs = append(seqs, e.Seq)
	}
	if fmt.Sprint(seqs) != "[4 5 6]" {
		t.Fatalf("kept %v, want the newest [4 5 6]", seqs)
	}
}

// Dead letters do not count toward MaxBytes: a file full of them does not
// make live records be dropped.
func TestDeadLettersOutsideMaxBytes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{MaxBytes: 5 << 20, MaxDeadLetterBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { b.Close(); checkCounters(t, path) }()
	appendRounds(t, b, 10, 1500, 200)           // 15,000 records, ~3.3 MB
	for seq := uint64(1); seq <= 10000; seq++ { // as a forwarder does: dead letters, then a release past them
		b.DeadLetter(seq, reasonTest, nil)
	}
	b.Release(10000)
	if err := b.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// ~3.3 MB live with the 5,000 left, ~2.8 MB of dead letters: the file
	// holds more than MaxBytes, the FIFO less.
	appendRounds(t, b, 10, 1000, 200)
	st := b.Stats()
	if st.Dropped[DropMaxBytes] != 0 || st.Records != 15000 || st.DeadLetterRecords != 10000 {
		t.Fatalf("stats %+v: dead letters pushed live records out", st)
	}
}

// Replay puts dead letters back at the tail with new sequence numbers,
// their receive time and properties kept, after the live records; it
// leaves the bucket in the same transaction. Live through the committer,
// and offline.
func TestReplayDeadLetters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b, 1, 5)
	deadLetterWait(t, b, 2, reasonTest)
	deadLetterWait(t, b, 4, "other")
	appendN(t, b, 6, 7)
	ctx := context.Background()
	res, err := b.ReplayDeadLetters(ctx, DeadLetterFilter{Reason: reasonTest})
	if err != nil || res != (ReplayResult{Replayed: 1, FirstSeq: 8, LastSeq: 8}) {
		t.Fatalf("replay: %+v, %v", res, err)
	}
	got := readAll(t, b)
	if fmt.Sprint(seqsOf(got)) != "[1 3 5 6 7 8]" {
		t.Fatalf("read %v after the replay", seqsOf(got))
	}
	want := inspectRec(2)
	if r := got[5]; !bytes.Equal(r.Payload, want.Payload) || r.Topic != want.Topic || r.QoS != want.QoS || !r.ReceivedAt.Equal(want.ReceivedAt) {
		t.Fatalf("replayed record %+v, want %+v", r, want)
	}
	st := b.Stats()
	if st.DeadLetterRecords != 1 || st.DeadLettered[reasonTest] != 1 || st.Records != 6 || st.LastSeq != 8 {
		t.Fatalf("stats after replay %+v", st)
	}
	b.Close()

	res, err = ReplayDeadLetters(path, DeadLetterFilter{Seq: 4})
	if err != nil || res != (ReplayResult{Replayed: 1, FirstSeq: 9, LastSeq: 9}) {
		t.Fatalf("offline replay: %+v, %v", res, err)
	}
	checkCounters(t, path)
	if b, err = Open(path, Options{}); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := ReplayDeadLetters(path, DeadLetterFilter{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("offline replay beside a running buffer: %v, want ErrLocked", err)
	}
	got = readAll(t, b)
	if fmt.Sprint(seqsOf(got)) != "[1 3 5 6 7 8 9]" || !bytes.Equal(got[6].Payload, inspectRec(4).Payload) {
		t.Fatalf("read %v after the offline replay", seqsOf(got))
	}
	if st := b.Stats(); st.DeadLetterRecords != 0 || st.DeadLetterBytes != 0 {
		t.Fatalf("stats %+v, want an empty dead-letter bucket", st)
	}
}

// An undecodable record cannot be replayed: it stays in the bucket.
func TestReplayKeepsUndecodable(t *testing.T) {
	b, path := openTest(t)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := b.AppendWait(ctx, rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	damageBatch(t, path, 2, func(v []byte) { v[len(v)-6] ^= 0xff })
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	readAll(t, b) // dead-letters record 2
	if err := b.flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := deadLetters(t, b.EachDeadLetter, DeadLetterFilter{})
	if len(got) != 1 || got[0].Reason != ReasonUndecodable || got[0].Record != nil || len(got[0].Raw) == 0 || got[0].Err == "" {
		t.Fatalf("entries %+v", got)
	}
	res, err := b.ReplayDeadLetters(ctx, DeadLetterFilter{})
	if err != nil || res != (ReplayResult{Kept: 1}) {
		t.Fatalf("replay: %+v, %v", res, err)
	}
	if st := b.Stats(); st.DeadLetterRecords != 1 || st.LastSeq != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// Purge deletes entries and counts their records as dropped; live and
// offline.
func TestPurgeDeadLetters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b, 1, 5)
	for seq := uint64(1); seq <= 4; seq++ {
		r := reasonTest
		if seq%2 == 0 {
			r = "other"
		}
		deadLetterWait(t, b, seq, r)
	}
	n, err := b.PurgeDeadLetters(context.Background(), DeadLetterFilter{Reason: "other"})
	if err != nil || n != 2 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	if st := b.Stats(); st.DeadLetterRecords != 2 || st.Dropped[DropDeadLetterPurged] != 2 || st.DeadLettered["other"] != 2 {
		t.Fatalf("stats %+v", st)
	}
	if _, err := PurgeDeadLetters(path, DeadLetterFilter{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("offline purge beside a running buffer: %v, want ErrLocked", err)
	}
	b.Close()
	if n, err := PurgeDeadLetters(path, DeadLetterFilter{Seq: 3}); err != nil || n != 1 {
		t.Fatalf("offline purge: %d, %v", n, err)
	}
	checkCounters(t, path)
	ro := openReadOnlyTest(t, path)
	info, err := ro.Info()
	if err != nil || info.DeadLetterRecords != 1 || info.Dropped[DropDeadLetterPurged] != 3 || info.Records != 1 {
		t.Fatalf("info %+v, %v", info, err)
	}
}

// The ID is kept across restarts, compaction and salvage, and is new for a
// new file.
func TestIDStable(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	id := b.ID()
	if len(id) != 16 || id != b.Stats().ID {
		t.Fatalf("id %q, stats %q", id, b.Stats().ID)
	}
	appendN(t, b, 1, 10)
	b.Close()
	if b, err = Open(path, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := b.ID(); got != id {
		t.Fatalf("after reopen: id %q, want %q", got, id)
	}
	b.Close()
	if _, _, err := Compact(path); err != nil {
		t.Fatal(err)
	}
	ro := openReadOnlyTest(t, path)
	if info, _ := ro.Info(); info.ID != id {
		t.Fatalf("after compaction: id %q, want %q", info.ID, id)
	}
	salvaged := filepath.Join(dir, "salvaged.db")
	if _, err := ro.Salvage(salvaged); err != nil {
		t.Fatal(err)
	}
	ro.Close()
	if b, err = Open(salvaged, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := b.ID(); got != id {
		t.Fatalf("after salvage: id %q, want %q", got, id)
	}
	b.Close()
	if b, err = Open(filepath.Join(dir, "new.db"), Options{}); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := b.ID(); got == id || len(got) != 16 {
		t.Fatalf("a new file has id %q (the other %q)", got, id)
	}
}

// Compaction and salvage carry the dead letters and their counters.
func TestCompactAndSalvageKeepDeadLetters(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b, 1, 10)
	deadLetterWait(t, b, 3, reasonTest)
	deadLetterWait(t, b, 7, "other")
	b.Release(8)
	if _, err := b.PurgeDeadLetters(context.Background(), DeadLetterFilter{Seq: 7}); err != nil {
		t.Fatal(err)
	}
	want := b.Stats()
	b.Close()
	same := func(what string, got Stats) {
		t.Helper()
		if got.DeadLetterRecords != 1 || got.DeadLetterBytes != want.DeadLetterBytes || fmt.Sprint(got.DeadLettered) != fmt.Sprint(want.DeadLettered) ||
			got.Dropped[DropDeadLetterPurged] != 1 {
			t.Fatalf("%s: %+v, want the dead letters of %+v", what, got, want)
		}
	}
	if _, _, err := Compact(path); err != nil {
		t.Fatal(err)
	}
	checkCounters(t, path)
	ro := openReadOnlyTest(t, path)
	salvaged := filepath.Join(dir, "salvaged.db")
	if _, err := ro.Salvage(salvaged); err != nil {
		t.Fatal(err)
	}
	ro.Close()
	checkCounters(t, salvaged)
	for _, p := range []string{path, salvaged} {
		b, err := Open(p, Options{})
		if err != nil {
			t.Fatal(err)
		}
		same(p, b.Stats())
		if got := deadLetters(t, b.EachDeadLetter, DeadLetterFilter{}); len(got) != 1 || got[0].Seq != 3 || got[0].Record == nil {
			t.Fatalf("%s: entries %+v", p, got)
		}
		b.Close()
	}
}

// oldFile makes a buffer file the way a ferry from before the dead-letter
// bucket left it: three live records, a quarantine bucket holding a single
// record and a whole broken batch of two, one total, no dead letters, no
// ID. It returns the two quarantine values.
func oldFile(t *testing.T, path string) (single, batch []byte) {
	t.Helper()
	fillBuffer(t, path, 3)
	batch = appendBatchV1(nil, [][]byte{appendEncoded(nil, rec(7)), appendEncoded(nil, rec(8))})
	single = appendEncoded(nil, rec(5))
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketDeadLetters); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.DeleteBucket(bucketDeadLettered); err != nil {
			return err
		}
		for _, k := range [][]byte{keyDLRecords, keyDLBytes, keyID} {
			if err := meta.Delete(k); err != nil {
				return err
			}
		}
		q, err := tx.CreateBucket(bucketQuarantine)
		if err != nil {
			return err
		}
		if err := q.Put(seqKey(1), single); err != nil {
			return err
		}
		if err := q.Put(seqKey(2), batch); err != nil {
			return err
		}
		return meta.Put(keyQuarantined, seqKey(3)) // 1 record + a batch of 2
	}); err != nil {
		t.Fatal(err)
	}
	return single, batch
}

// A file written before the dead-letter bucket existed: its quarantine
// becomes dead letters, counted, when Open, Compact, Salvage or an offline
// purge reads it.
func TestQuarantineMigrates(t *testing.T) {
	for _, tc := range []struct {
		name string
		op   func(t *testing.T, path string) string // returns the file to open
	}{
		{"open", func(t *testing.T, path string) string { return path }},
		{"compact", func(t *testing.T, path string) string {
			if _, _, err := Compact(path); err != nil {
				t.Fatal(err)
			}
			return path
		}},
		{"salvage", func(t *testing.T, path string) string {
			ro := openReadOnlyTest(t, path)
			dst := path + ".salvaged"
			if _, err := ro.Salvage(dst); err != nil {
				t.Fatal(err)
			}
			ro.Close()
			return dst
		}},
		{"purge", func(t *testing.T, path string) string {
			if _, err := Purge(path, time.Unix(0, 0)); err != nil {
				t.Fatal(err)
			}
			return path
		}},
		{"dlq purge", func(t *testing.T, path string) string {
			if _, err := PurgeDeadLetters(path, DeadLetterFilter{Seq: 99}); err != nil {
				t.Fatal(err)
			}
			return path
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "buffer.db")
			single, batch := oldFile(t, path)
			path = tc.op(t, path)
			if tc.name != "open" {
				checkCounters(t, path)
			}
			b, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			st := b.Stats()
			if st.DeadLettered[ReasonUndecodable] != 1 || st.DeadLettered[ReasonBrokenBatch] != 2 || st.DeadLetterRecords != 3 ||
				st.DeadLetterBytes == 0 || st.Records != 3 || st.ID == "" {
				t.Fatalf("stats after migration %+v", st)
			}
			got := deadLetters(t, b.EachDeadLetter, DeadLetterFilter{})
			if len(got) != 2 || got[0].Reason != ReasonUndecodable || got[0].Record == nil || !bytes.Equal(got[0].Record.Payload, rec(5).Payload) ||
				got[1].Reason != ReasonBrokenBatch || !bytes.Equal(got[1].Raw, batch) || got[1].Records != 2 {
				t.Fatalf("entries %+v (single %x)", got, single)
			}
			b.Close()
			checkCounters(t, path)
			db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			db.View(func(tx *bolt.Tx) error {
				if tx.Bucket(bucketQuarantine) != nil || tx.Bucket(bucketMeta).Get(keyQuarantined) != nil {
					t.Error("the quarantine bucket or its counter is still there")
				}
				return nil
			})
		})
	}
}

// Read stops before maxBytes of payload and topic, but returns a record
// larger than the bound alone.
func TestReadByteBound(t *testing.T) {
	b, _ := openTest(t)
	ctx := context.Background()
	for _, n := range []int{100, 100, 100, 1000, 100} {
		if _, err := b.AppendWait(ctx, &Record{Topic: "t", Payload: make([]byte, n)}); err != nil {
			t.Fatal(err)
		}
	}
	var after uint64
	var got [][]uint64
	for after < 5 {
		recs, err := b.Read(ctx, after, 10, 250, nil)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, seqsOf(recs))
		after = recs[len(recs)-1].Seq
	}
	if fmt.Sprint(got) != "[[1 2] [3] [4] [5]]" {
		t.Fatalf("reads %v, want [[1 2] [3] [4] [5]]", got)
	}
	recs, err := b.Read(ctx, 0, 2, 0, nil)
	if err != nil || fmt.Sprint(seqsOf(recs)) != "[1 2]" {
		t.Fatalf("read with no byte bound: %v, %v", seqsOf(recs), err)
	}
}

// Append blocks while the queued bytes would go above QueueBytes, and a
// record larger than QueueBytes goes through alone.
func TestQueueBytes(t *testing.T) {
	one := len(appendEncoded(nil, rec(1)))
	// Block at MaxBytes keeps appends queued: the queue fills.
	b, err := Open(filepath.Join(t.TempDir(), "b.db"), Options{MaxBytes: int64(2 * one), WhenFull: Block, QueueBytes: 2*one + one/2})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	for i := 1; i <= 2; i++ {
		if _, err := b.AppendWait(ctx, rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	stored := make(chan uint64, 3)
	for i := 3; i <= 4; i++ { // queued: the buffer is full
		if err := b.Append(rec(i), func(seq uint64, err error) { stored <- seq }); err != nil {
			t.Fatal(err)
		}
	}
	appended := make(chan error, 1)
	go func() { appended <- b.Append(rec(5), func(seq uint64, err error) { stored <- seq }) }()
	select {
	case err := <-appended:
		t.Fatalf("a third append returned (%v) with two queued and room for 2.5", err)
	case <-time.After(200 * time.Millisecond):
	}
	b.Release(4) // room for everything
	select {
	case err := <-appended:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("append still blocked after the queue drained")
	}
	for range 3 {
		<-stored
	}

	big, err := Open(filepath.Join(t.TempDir(), "big.db"), Options{QueueBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	if seq, err := big.AppendWait(ctx, &Record{Topic: "t", Payload: make([]byte, 1000)}); err != nil || seq != 1 {
		t.Fatalf("a record above QueueBytes: %d, %v", seq, err)
	}
}

// Close releases an append waiting for queue bytes.
func TestQueueBytesClose(t *testing.T) {
	one := len(appendEncoded(nil, rec(1)))
	b, err := Open(filepath.Join(t.TempDir(), "b.db"), Options{MaxBytes: int64(one), WhenFull: Block, QueueBytes: one})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.AppendWait(context.Background(), rec(1)); err != nil {
		t.Fatal(err)
	}
	b.Append(rec(2), func(uint64, error) {}) // queued
	appended := make(chan error, 1)
	go func() { appended <- b.Append(rec(3), func(uint64, error) {}) }()
	time.Sleep(50 * time.Millisecond)
	b.Close()
	if err := <-appended; !errors.Is(err, ErrClosed) {
		t.Fatalf("append blocked on the queue at Close: %v, want ErrClosed", err)
	}
}

func FuzzDecodeDeadEntry(f *testing.F) {
	f.Add(appendDeadEntry(nil, &deadEntry{reason: reasonTest, detail: "too large", at: time.Unix(1700000000, 5), records: 1, body: appendEncoded(nil, rec(1))}))
	f.Add(appendDeadEntry(nil, &deadEntry{reason: ReasonBrokenBatch, records: 3, batch: true, body: []byte{batchMagic, 0, 1}}))
	f.Add([]byte{deadMagic, deadV1, 0, 0xff})
	f.Fuzz(func(t *testing.T, v []byte) {
		e, err := decodeDeadEntry(v)
		if err != nil {
			return
		}
		e2, err := decodeDeadEntry(appendDeadEntry(nil, &e))
		if err != nil || e2.reason != e.reason || e2.detail != e.detail || !e2.at.Equal(e.at) || e2.records != e.records ||
			e2.batch != e.batch || !bytes.Equal(e2.body, e.body) {
			t.Fatalf("re-encoded %+v decodes as %+v, %v", e, e2, err)
		}
		e.entry(1, len(v)) // must not panic, whatever the body
	})
}

// Between measurements the dead-letter pages follow the stored bytes; a
// small change within a second is not measured again, a large one is.
func TestDeadLetterPagesEstimate(t *testing.T) {
	p := dlPages{measured: 5 << 20, atBytes: 4 << 20, at: time.Unix(100, 0)}
	for _, tc := range []struct{ bytes, want uint64 }{
		{4 << 20, 5 << 20}, {5 << 20, 6 << 20}, {3 << 20, 4 << 20}, {0, 1 << 20},
	} {
		if got := p.estimate(state{dlBytes: tc.bytes}); got != tc.want {
			t.Errorf("estimate for %d stored bytes: %d, want %d", tc.bytes, got, tc.want)
		}
	}
	b, _ := openTest(t)
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	b.db.View(func(tx *bolt.Tx) error {
		q := p
		q.stale = true
		if q.measure(tx, state{dlBytes: 4<<20 + 1000}, time.Unix(100, 5e8)); q.at != p.at {
			t.Error("a small change half a second later was measured")
		}
		if q.measure(tx, state{dlBytes: 6 << 20}, time.Unix(100, 5e8)); q.at == p.at || q.stale || q.atBytes != 6<<20 {
			t.Errorf("a large change was not measured: %+v", q)
		}
		return nil
	})
}
