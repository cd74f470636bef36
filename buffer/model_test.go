package buffer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// modelRec is a record as the model keeps it.
type modelRec struct {
	seq     uint64
	payload string
	size    int // encoded size, what MaxBytes counts
}

// TestFIFOMatchesModel drives a buffer with random appends, reads, releases,
// dead letters, replays, restarts and a MaxBytes limit, and checks it
// against a plain slice.
func TestFIFOMatchesModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		path := filepath.Join(t.TempDir(), fmt.Sprintf("model-%d.db", time.Now().UnixNano()))
		maxBytes := rapid.OneOf(rapid.Just(int64(0)), rapid.Int64Range(300, 3000)).Draw(rt, "maxBytes")
		// With a write delay, appends wait for the deadline's commit
		// (nothing releases them first) and a restart skips the
		// sequence numbers reserved.
		delay := rapid.SampledFrom([]time.Duration{0, 2 * time.Millisecond}).Draw(rt, "writeDelay")
		opts := Options{MaxBytes: maxBytes, WriteDelay: delay}
		b, err := Open(path, opts)
		if err != nil {
			rt.Fatal(err)
		}
		defer func() { b.Close() }()
		ctx := context.Background()

		var model []modelRec
		next := uint64(1)
		var dropped uint64
		var dead []modelRec // dead-lettered, in sequence order
		var deadEver uint64
		modelBytes := func() (n int64) {
			for _, r := range model {
				n += int64(r.size)
			}
			return n
		}
		check := func(what string) {
			var got []Record
			var after uint64
			for {
				rctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
				recs, err := b.Read(rctx, after, 7, 0, nil)
				cancel()
				if errors.Is(err, context.DeadlineExceeded) {
					break
				}
				if err != nil {
					rt.Fatalf("%s: read: %v", what, err)
				}
				got = append(got, recs...)
				after = recs[len(recs)-1].Seq
			}
			if len(got) != len(model) {
				rt.Fatalf("%s: read %d records, model has %d", what, len(got), len(model))
			}
			for i := range got {
				if got[i].Seq != model[i].seq || string(got[i].Payload) != model[i].payload {
					rt.Fatalf("%s: record %d is seq %d %q, model seq %d %q", what, i, got[i].Seq, got[i].Payload, model[i].seq, model[i].payload)
				}
			}
			st := b.Stats()
			if st.Records != uint64(len(model)) || int64(st.Bytes) != modelBytes() || st.Dropped[DropMaxBytes] != dropped {
				rt.Fatalf("%s: stats %+v; model %d records, %d bytes, %d dropped", what, st, len(model), modelBytes(), dropped)
			}
			if st.DeadLetterRecords != uint64(len(dead)) || st.DeadLettered["model"] != deadEver {
				rt.Fatalf("%s: stats %+v; model %d dead letters held, %d ever", what, st, len(dead), deadEver)
			}
			if st.LastSeq != next-1 {
				rt.Fatalf("%s: LastSeq %d, want %d", what, st.LastSeq, next-1)
			}
		}

		rt.Repeat(map[string]func(*rapid.T){
			"append": func(rt *rapid.T) {
				payload := rapid.StringN(0, 300, -1).Draw(rt, "payload")
				rec := &Record{Topic: "t", Payload: []byte(payload), ReceivedAt: time.Unix(0, 1)}
				seq, err := b.AppendWait(ctx, rec)
				if err != nil {
					rt.Fatal(err)
				}
				if seq != next {
					rt.Fatalf("append got seq %d, want %d", seq, next)
				}
				model = append(model, modelRec{seq: seq, payload: payload, size: len(appendEncoded(nil, rec))})
				next++
				for maxBytes > 0 && modelBytes() > maxBytes {
					model = model[1:]
					dropped++
				}
			},
			"release": func(rt *rapid.T) {
				if len(model) == 0 {
					return
				}
				i := rapid.IntRange(0, len(model)-1).Draw(rt, "i")
				b.Release(model[i].seq)
				if err := b.flush(ctx); err != nil {
					rt.Fatal(err)
				}
				model = model[i+1:]
			},
			"remove": func(rt *rapid.T) {
				if len(model) == 0 {
					return
				}
				var seqs []uint64
				kept := model[:0:0]
				for _, r := range model {
					if rapid.Bool().Draw(rt, "remove") {
						seqs = append(seqs, r.seq)
					} else {
						kept = append(kept, r)
					}
				}
				b.Remove(seqs...)
				if err := b.flush(ctx); err != nil {
					rt.Fatal(err)
				}
				model = kept
			},
			"deadletter": func(rt *rapid.T) {
				if len(model) == 0 {
					return
				}
				i := rapid.IntRange(0, len(model)-1).Draw(rt, "i")
				b.DeadLetter(model[i].seq, "model", nil)
				if err := b.flush(ctx); err != nil {
					rt.Fatal(err)
				}
				j := 0
				for j < len(dead) && dead[j].seq < model[i].seq {
					j++
				}
				dead = append(dead[:j], append([]modelRec{model[i]}, dead[j:]...)...)
				model = append(model[:i], model[i+1:]...)
				deadEver++
			},
			"replay": func(rt *rapid.T) {
				res, err := b.ReplayDeadLetters(ctx, DeadLetterFilter{})
				if err != nil {
					rt.Fatal(err)
				}
				if res.Replayed != uint64(len(dead)) {
					rt.Fatalf("replayed %+v, model has %d dead letters", res, len(dead))
				}
				for _, r := range dead {
					model = append(model, modelRec{seq: next, payload: r.payload, size: r.size})
					next++
				}
				dead = nil
				for maxBytes > 0 && modelBytes() > maxBytes {
					model = model[1:]
					dropped++
				}
			},
			"restart": func(rt *rapid.T) {
				if err := b.Close(); err != nil {
					rt.Fatal(err)
				}
				checkCounters(rt, path)
				if b, err = Open(path, opts); err != nil {
					rt.Fatal(err)
				}
				if delay > 0 {
					last := b.Stats().LastSeq
					if last < next-1 {
						rt.Fatalf("restart: LastSeq %d is below %d, given out before", last, next-1)
					}
					next = last + 1
				}
			},
			"": func(rt *rapid.T) { check("check") },
		})
		b.Close()
		checkConsistency(t, path)
		checkCounters(t, path)
	})
}

func TestMaxBytesBlockHoldsAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	one := len(appendEncoded(nil, rec(1)))
	b, err := Open(path, Options{MaxBytes: int64(3 * one), WhenFull: Block})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := b.AppendWait(ctx, rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan uint64, 1)
	if err := b.Append(rec(4), func(seq uint64, err error) { done <- seq }); err != nil {
		t.Fatal(err)
	}
	select {
	case seq := <-done:
		t.Fatalf("record %d was stored while the buffer was full", seq)
	case <-time.After(200 * time.Millisecond):
	}
	b.Release(1)
	select {
	case seq := <-done:
		if seq != 4 {
			t.Fatalf("seq %d, want 4", seq)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("append still blocked after a release made room")
	}
	if st := b.Stats(); st.Dropped[DropMaxBytes] != 0 || st.Records != 3 {
		t.Fatalf("stats %+v: Block must not drop", st)
	}
}

// Stats.OldestAge is how long the head has waited since it was received:
// on disk by its receive time, in memory since it was appended; 0 when
// the buffer is empty.
func TestStatsOldestAge(t *testing.T) {
	now := time.Unix(1700000000, 0)
	b, err := Open(filepath.Join(t.TempDir(), "b.db"), Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if age := b.Stats().OldestAge; age != 0 {
		t.Fatalf("empty buffer: oldest age %v, want 0", age)
	}
	var seqs []uint64
	for _, ago := range []time.Duration{90 * time.Minute, 30 * time.Minute} {
		r := rec(len(seqs))
		r.ReceivedAt = now.Add(-ago)
		seq, err := b.AppendWait(t.Context(), r)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	if age := b.Stats().OldestAge; age != 90*time.Minute {
		t.Fatalf("oldest age %v, want 1h30m", age)
	}
	b.Release(seqs[0])
	waitUntil(t, "the head to move to the 30-minute-old record", func() bool { return b.Stats().OldestAge == 30*time.Minute })
	b.Release(seqs[1])
	waitUntil(t, "the buffer to be empty", func() bool { return b.Stats().Records == 0 })
	if age := b.Stats().OldestAge; age != 0 {
		t.Fatalf("drained buffer: oldest age %v, want 0", age)
	}

	// A head held in memory only has waited since it was appended.
	mem, _ := openTestWith(t, Options{WriteDelay: time.Hour})
	r := rec(0)
	r.ReceivedAt = time.Now()
	if err := mem.Append(r, func(uint64, error) {}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if st := mem.Stats(); st.TailRecords != 1 || st.OldestAge < 50*time.Millisecond || st.OldestAge > 10*time.Second {
		t.Fatalf("tail %d records, oldest age %v: want 1 record, 50ms to 10s old", st.TailRecords, st.OldestAge)
	}
}

func TestMaxAgeDropsOldRecords(t *testing.T) {
	now := time.Unix(1700000000, 0)
	var mu = make(chan struct{}, 1)
	mu <- struct{}{}
	clock := func() time.Time { <-mu; defer func() { mu <- struct{}{} }(); return now }
	b, err := Open(filepath.Join(t.TempDir(), "b.db"), Options{MaxAge: time.Hour, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	for i := range 5 {
		r := rec(i)
		r.ReceivedAt = now.Add(-time.Duration(90-10*i) * time.Minute) // 90, 80, 70, 60, 50 minutes old
		if _, err := b.AppendWait(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.flush(ctx); err != nil {
		t.Fatal(err)
	}
	st := b.Stats()
	// Records 90, 80 and 70 minutes old are beyond the hour; 60 is not beyond it.
	if st.Records != 2 || st.Dropped[DropMaxAge] != 3 || st.FirstSeq != 4 {
		t.Fatalf("stats %+v, want 2 records left from seq 4 and 3 dropped for max_age", st)
	}
	<-mu
	now = now.Add(5 * time.Minute) // 65 and 55 minutes old: one more is beyond the hour
	mu <- struct{}{}
	deadline := time.Now().Add(5 * time.Second)
	for b.Stats().Records != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the record that aged past max_age was not dropped by the timer: %+v", b.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDeadLetterInsideBatch(t *testing.T) {
	b, _ := openTest(t)
	ctx := context.Background()
	var seqs []uint64
	done := make(chan struct{}, 10)
	for i := range 10 { // one commit, one batch
		if err := b.Append(rec(i), func(seq uint64, err error) { seqs = append(seqs, seq); done <- struct{}{} }); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		<-done
	}
	b.DeadLetter(5, "rejected", errors.New("rejected"))
	if err := b.flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, b)
	if len(got) != 9 {
		t.Fatalf("read %d records, want 9", len(got))
	}
	for _, r := range got {
		if r.Seq == 5 {
			t.Fatal("dead-lettered record still read")
		}
	}
	if st := b.Stats(); st.DeadLettered["rejected"] != 1 || st.DeadLetterRecords != 1 || st.Records != 9 {
		t.Fatalf("stats %+v", st)
	}
}

func FuzzParseBatch(f *testing.F) {
	recs := [][]byte{appendEncoded(nil, rec(1)), nil, appendEncoded(nil, rec(2))}
	f.Add(uint64(7), appendBatch(nil, 7, recs))
	f.Add(uint64(7), appendBatch(nil, 8, recs))
	f.Add(uint64(7), appendBatchV1(nil, recs))
	f.Add(uint64(1), appendBatch(nil, 1, nil))
	f.Add(uint64(1), []byte{batchMagic, batchV1, 0xff, 0xff})
	f.Add(uint64(1), []byte{batchMagic, batchV2, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, key uint64, v []byte) {
		recs, count, err := parseBatch(key, v)
		if len(recs) > count {
			t.Fatalf("%d records framed, header says %d", len(recs), count)
		}
		if err != nil {
			return
		}
		want := appendBatch(nil, key, recs)
		if v[1] == batchV1 {
			want = appendBatchV1(nil, recs)
		}
		if string(want) != string(v) {
			t.Fatalf("re-encoding differs")
		}
	})
}

// A batch of version 2 holds its base under its checksum: under another
// key it yields no records (under the key their numbers are wrong). Sound,
// it is damage in the file (misplaced: the key is wrong); with its
// checksum failing too, nothing tells which is, and every caller takes it
// for a batch whose framing is broken (dead-lettered whole, never
// delivered under the key's numbers). A batch of version 1 is read under
// whatever key it has.
func TestParseBatchKeyAndBase(t *testing.T) {
	recs := [][]byte{appendEncoded(nil, rec(1)), nil, appendEncoded(nil, rec(2))}
	v := appendBatch(nil, 1<<20, recs)
	if got, n, err := parseBatch(1<<20, v); err != nil || n != 3 || len(got) != 3 {
		t.Fatalf("under its own key: %d of %d records, %v", len(got), n, err)
	}
	got, n, err := parseBatch(1<<20|1<<9, v) // a bit of the key flipped
	if !misplaced(err) || !errors.Is(err, ErrCorruptFile) || n != 3 || len(got) != 0 {
		t.Fatalf("under another key: %d of %d records, %v; want none, 3, misplaced", len(got), n, err)
	}
	damaged := bytes.Clone(v)
	damaged[len(damaged)-1] ^= 1 // its checksum
	got, n, err = parseBatch(1<<20|1<<9, damaged)
	if misplaced(err) || !errors.Is(err, ErrCorrupt) || n != 3 || len(got) != 0 || !framingBroken(got, n, err) {
		t.Fatalf("damaged, under another key: %d of %d records, %v; want none, 3, ErrCorrupt", len(got), n, err)
	}
	if base, hasBase, n, _, ok := batchHeader(v); !ok || !hasBase || base != 1<<20 || n != 3 {
		t.Fatalf("header: base %d (%v), %d records, ok %v", base, hasBase, n, ok)
	}
	old := appendBatchV1(nil, recs)
	for _, key := range []uint64{1, 1 << 40} {
		if got, n, err := parseBatch(key, old); err != nil || n != 3 || len(got) != 3 {
			t.Fatalf("version 1 under key %d: %d of %d records, %v", key, len(got), n, err)
		}
	}
	if _, hasBase, n, _, ok := batchHeader(old); !ok || hasBase || n != 3 {
		t.Fatalf("version 1 header: base %v, %d records, ok %v", hasBase, n, ok)
	}
}

// appendBatchV1 is appendBatch as ferry wrote batches before version 2,
// without their base: the batches of files written then.
func appendBatchV1(dst []byte, recs [][]byte) []byte {
	start := len(dst)
	dst = append(dst, batchMagic, batchV1)
	dst = binary.AppendUvarint(dst, uint64(len(recs)))
	for _, r := range recs {
		dst = binary.AppendUvarint(dst, uint64(len(r)))
		dst = append(dst, r...)
	}
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// With Block, one commit takes no more than the room left below MaxBytes
// (plus at most one record), however many appends wait.
func TestBlockDoesNotOvershoot(t *testing.T) {
	one := len(appendEncoded(nil, rec(1)))
	b, err := Open(filepath.Join(t.TempDir(), "b.db"), Options{MaxBytes: int64(3 * one), WhenFull: Block})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	stored := make(chan uint64, 10)
	for i := range 10 {
		if err := b.Append(rec(i), func(seq uint64, err error) { stored <- seq }); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(stored); n > 4 {
		t.Fatalf("Block made %d records durable, MaxBytes holds 3 (stats %+v)", n, b.Stats())
	}
}

// Close returns even while appends wait on a full queue behind a full
// buffer; they fail with ErrClosed (their sources were never acknowledged).
func TestCloseReleasesBlockedAppends(t *testing.T) {
	one := len(appendEncoded(nil, rec(1)))
	b, err := Open(filepath.Join(t.TempDir(), "b.db"), Options{MaxBytes: int64(one), WhenFull: Block, QueueSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.AppendWait(context.Background(), rec(1)); err != nil {
		t.Fatal(err)
	}
	results := make(chan error, 5)
	for i := range 5 {
		go func() { results <- b.Append(rec(i), func(uint64, error) {}) }()
	}
	time.Sleep(200 * time.Millisecond)
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung behind appends blocked on a full queue")
	}
	refused := 0
	for range 5 {
		if errors.Is(<-results, ErrClosed) {
			refused++
		}
	}
	if refused == 0 {
		t.Fatal("no blocked append was refused")
	}
}

// MaxBytes bounds what the file really holds, not just the records'
// encoded size: bbolt's pages cost more than the data in them (batch
// framing, leaf tails, branch pages), and the limit accounts for that.
func TestMaxBytesBoundsDiskUse(t *testing.T) {
	const maxBytes = 4 << 20
	payload := bytes.Repeat([]byte("p"), 200)
	big := func(i int) *Record {
		return &Record{Topic: "sensors/dev-01/telemetry", Payload: payload, QoS: 1, ReceivedAt: time.Unix(1700000000, int64(i))}
	}
	for _, when := range []WhenFull{DropOldest, Block} {
		t.Run(map[WhenFull]string{DropOldest: "drop_oldest", Block: "block"}[when], func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "b.db")
			b, err := Open(path, Options{MaxBytes: maxBytes, WhenFull: when})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			// 5 MiB of records in commits of 100 (~25 KiB): more than fits.
			// Every round waits for its records to be durable, so what
			// follows sees them committed.
			round := 100 * int64(len(appendEncoded(nil, big(0))))
			appended := 0
			for range 220 {
				// With block, stop well before the limit: the room is
				// measured anew at each commit, so a round that starts
				// with little room may wait for room that never comes.
				if when == Block && b.room() < 4*round {
					break
				}
				done := make(chan error, 100)
				for range 100 {
					appended++
					if err := b.Append(big(appended), func(_ uint64, err error) { done <- err }); err != nil {
						t.Fatal(err)
					}
				}
				for range 100 {
					select {
					case err := <-done:
						if err != nil {
							t.Fatal(err)
						}
					case <-time.After(30 * time.Second):
						t.Fatalf("an append is still waiting after 30s: %+v", b.Stats())
					}
				}
			}
			info, err := b.Info()
			if err != nil {
				t.Fatal(err)
			}
			st := b.Stats()
			const commit = 64 << 10 // one commit of 100 records on disk, with room to spare
			if info.UsedBytes > maxBytes+commit {
				t.Fatalf("%d bytes of the file in use, max_bytes is %d (records %d, %d bytes encoded)", info.UsedBytes, maxBytes, st.Records, st.Bytes)
			}
			if info.UsedBytes < maxBytes*8/10 {
				t.Fatalf("only %d bytes of the file in use at max_bytes %d: the limit drops or blocks too early", info.UsedBytes, maxBytes)
			}
			if onDisk, ok := allocated(path); ok && onDisk > maxBytes+2*commit {
				t.Fatalf("the file occupies %d bytes on disk, max_bytes is %d", onDisk, maxBytes)
			}
			if st.Records+st.Dropped[DropMaxBytes] != uint64(appended) || st.LastSeq != uint64(appended) {
				t.Fatalf("stats %+v: %d appended, every one is held or counted as dropped", st, appended)
			}
			if when == DropOldest && st.FirstSeq != st.LastSeq-st.Records+1 {
				t.Fatalf("stats %+v: the records held are not the newest", st)
			}
			if when == Block && st.Dropped[DropMaxBytes] != 0 {
				t.Fatalf("stats %+v: block dropped records", st)
			}
		})
	}
}
