package buffer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestCompactShrinksAndKeepsRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("p", 2000)
	for i := 1; i <= 3000; i++ {
		r := inspectRec(i)
		r.Payload = append(r.Payload, pad...)
		if err := b.Append(r, func(uint64, error) {}); err != nil {
			t.Fatal(err)
		}
	}
	b.Release(2900)
	if err := b.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.Close()
	t.Cleanup(func() { checkConsistency(t, path) })

	if did, err := CompactIfSparse(path, 1<<40, 0.5); err != nil || did {
		t.Fatalf("CompactIfSparse below minSize: %v, %v", did, err)
	}
	ro := openReadOnlyTest(t, path)
	info, err := ro.Info()
	if err != nil {
		t.Fatal(err)
	}
	ro.Close()
	if info.FreeFraction() < 0.5 || info.RetiredBytes == 0 {
		t.Fatalf("file not sparse after the release: %+v", info)
	}

	before, after, err := Compact(path)
	if err != nil {
		t.Fatal(err)
	}
	if before != info.FileSize || after > before/2 || after != fileSize(t, path) {
		t.Errorf("compact: %d -> %d bytes (file %d)", before, after, fileSize(t, path))
	}
	if _, err := os.Stat(path + ".compact"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left behind: %v", err)
	}
	if did, err := CompactIfSparse(path, 0, 0.9); err != nil || did {
		t.Errorf("CompactIfSparse of a dense file: %v, %v", did, err)
	}

	b, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if st := b.Stats(); st.Records != 100 || st.FirstSeq != 2901 || st.LastSeq != 3000 {
		t.Errorf("stats after compaction %+v", st)
	}
	var want uint64 = 2901
	if _, err := b.Each(func(r Record) error {
		if r.Seq != want || !strings.HasSuffix(string(r.Payload), pad) {
			return errors.New("records differ after compaction")
		}
		want++
		return nil
	}); err != nil || want != 3001 {
		t.Fatalf("each after compaction: %v, up to %d", err, want)
	}
	if seq, err := b.AppendWait(context.Background(), inspectRec(3001)); err != nil || seq != 3001 {
		t.Errorf("append after compaction: seq %d, %v", seq, err)
	}
}

// sparseBuffer writes 2,000 records to a new buffer at path and releases
// all but the last 10: a file mostly free.
func sparseBuffer(t *testing.T, path string) {
	t.Helper()
	fillBuffer(t, path, 2000)
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b.Release(1990)
	b.Close()
}

func TestCompactIfSparse(t *testing.T) {
	dir := t.TempDir()
	if did, err := CompactIfSparse(filepath.Join(dir, "missing.db"), 0, 0); err != nil || did {
		t.Errorf("missing file: %v, %v", did, err)
	}
	path := filepath.Join(dir, "buffer.db")
	sparseBuffer(t, path)
	before := fileSize(t, path)
	if did, err := CompactIfSparse(path, 0, 0.5); err != nil || !did {
		t.Fatalf("sparse file: %v, %v", did, err)
	}
	if after := fileSize(t, path); after >= before {
		t.Errorf("%d -> %d bytes", before, after)
	}
	checkConsistency(t, path)
}

// TestCompactLeavesAMarkedFile: a file marked as damaged is moved aside
// and salvaged as it is, not copied by a compaction first (which reads
// through the damage, and would leave the salvage a different file).
func TestCompactLeavesAMarkedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	sparseBuffer(t, path)
	if err := writeDamageMark(path, errors.New("test damage")); err != nil {
		t.Fatal(err)
	}
	before := fileSize(t, path)
	if did, err := CompactIfSparse(path, 0, 0.5); err != nil || did {
		t.Fatalf("CompactIfSparse of a marked file: %v, %v; want false, nil", did, err)
	}
	if after := fileSize(t, path); after != before {
		t.Errorf("the marked file went from %d to %d bytes", before, after)
	}
	if _, _, err := Compact(path); !errors.Is(err, ErrCorruptFile) {
		t.Errorf("Compact of a marked file: %v, want ErrCorruptFile", err)
	}
	if after := fileSize(t, path); after != before {
		t.Errorf("the marked file went from %d to %d bytes", before, after)
	}
	if _, err := Open(path, Options{}); !errors.Is(err, ErrCorruptFile) {
		t.Errorf("Open after CompactIfSparse: %v, want ErrCorruptFile", err)
	}
}

func TestOfflineToolsRefuseLiveBuffer(t *testing.T) {
	_, path := openTest(t)
	if _, _, err := Compact(path); !errors.Is(err, ErrLocked) {
		t.Errorf("Compact: %v, want ErrLocked", err)
	}
	if _, err := CompactIfSparse(path, 0, 0); !errors.Is(err, ErrLocked) {
		t.Errorf("CompactIfSparse: %v, want ErrLocked", err)
	}
	if _, err := Purge(path, time.Now()); !errors.Is(err, ErrLocked) {
		t.Errorf("Purge: %v, want ErrLocked", err)
	}
}

func TestPurgeRemovesOnlyOldRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := 1; i <= 500; i++ {
		r := inspectRec(i)
		r.ReceivedAt = now.Add(-time.Hour)
		if i <= 230 {
			r.ReceivedAt = now.Add(-100*time.Hour + time.Duration(i)*time.Second)
		}
		if err := b.Append(r, func(uint64, error) {}); err != nil {
			t.Fatal(err)
		}
	}
	b.Release(10)
	b.Close()
	t.Cleanup(func() { checkConsistency(t, path) })

	n, err := Purge(path, now.Add(-72*time.Hour))
	if err != nil || n != 220 {
		t.Fatalf("purge removed %d, %v; want 220", n, err)
	}
	if n, err := Purge(path, now.Add(-72*time.Hour)); err != nil || n != 0 {
		t.Errorf("second purge removed %d, %v", n, err)
	}
	ro := openReadOnlyTest(t, path)
	info, err := ro.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Records != 270 || info.FirstSeq != 231 || info.Dropped[DropPurged] != 220 {
		t.Errorf("after purge: %+v", info)
	}
	if rep, err := ro.Verify(context.Background()); err != nil || !rep.OK() {
		t.Errorf("verify after purge: %+v, %v", rep, err)
	}
	ro.Close()

	// Everything old, the buffer empties; sequence numbers continue.
	if n, err := Purge(path, now); err != nil || n != 270 {
		t.Fatalf("purge all: %d, %v", n, err)
	}
	b, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if st := b.Stats(); st.Records != 0 || st.Bytes != 0 {
		t.Errorf("stats after purging all %+v", st)
	}
	if seq, err := b.AppendWait(context.Background(), inspectRec(501)); err != nil || seq != 501 {
		t.Errorf("append after purge: %d, %v", seq, err)
	}
}

// When a delivered backlog leaves the file mostly free, the committer
// compacts it on the spot; the buffer goes on working, sequence numbers
// continue.
func TestCompactsWhenDrained(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{CompactMinSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { b.Close(); checkConsistency(t, path) }()
	payload := make([]byte, 1000)
	var wg sync.WaitGroup
	var last uint64
	var mu sync.Mutex
	for range 5000 { // ~5 MB
		wg.Add(1)
		if err := b.Append(&Record{Topic: "t", Payload: payload}, func(seq uint64, err error) {
			mu.Lock()
			last = max(last, seq)
			mu.Unlock()
			wg.Done()
		}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	full := fileSize(t, path)
	b.Release(last)
	deadline := time.Now().Add(10 * time.Second)
	for fileSize(t, path) > full/4 {
		if time.Now().After(deadline) {
			t.Fatalf("file still %d bytes after the buffer drained (was %d)", fileSize(t, path), full)
		}
		time.Sleep(20 * time.Millisecond)
	}
	seq, err := b.AppendWait(context.Background(), rec(1))
	if err != nil || seq != last+1 {
		t.Fatalf("append after compaction: seq %d err %v, want seq %d", seq, err, last+1)
	}
	got := readAll(t, b)
	if len(got) != 1 || got[0].Seq != last+1 {
		t.Fatalf("read after compaction: %+v", got)
	}
	t.Logf("file %d -> %d bytes", full, fileSize(t, path))
}

// Released records' batches are retired, not deleted at once: their pages
// stay off bbolt's freelist (which every commit writes whole), and new
// records take their place, so the file does not grow and the freelist
// stays small.
func TestReleasedSpaceIsReused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{CompactMinSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	fill := func() { appendRounds(t, b, 100, 100, 200) } // commits of 100 records, as a busy gateway makes them
	info := func() Info {
		t.Helper()
		if err := b.flush(ctx); err != nil {
			t.Fatal(err)
		}
		i, err := b.Info()
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	fill()
	full := info()
	b.Release(b.Stats().LastSeq)
	released := info()
	if released.RetiredBytes < 2<<20 || released.FreePages > 64 || released.UsedBytes < full.UsedBytes {
		t.Fatalf("after releasing 10000 records: %+v (before: %+v); want them retired, in use, off the freelist", released, full)
	}
	fill()
	refilled := info()
	if refilled.UsedBytes > full.UsedBytes*11/10 || refilled.FreePages > 64 {
		t.Fatalf("after 10000 more records: %+v (first fill: %+v); want the retired space reused", refilled, full)
	}
	if st := b.Stats(); st.Records != 10000 || st.FirstSeq != 10001 {
		t.Fatalf("stats %+v", st)
	}
	b.Close()
	checkConsistency(t, path)
	checkCounters(t, path)
}

// Commits that only release records are gathered (releaseInterval): a
// forwarder releases many times a second, and each commit costs the disk
// a few pages. Close still writes the last release.
func TestReleasesAreGathered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if _, err := b.AppendWait(context.Background(), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	c0, start := b.Stats().Commits, time.Now()
	for seq := uint64(1); seq <= 50; seq++ {
		b.Release(seq)
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(start)
	if commits, most := b.Stats().Commits-c0, uint64(elapsed/(100*time.Millisecond))+2; commits > most { // releaseInterval
		t.Errorf("50 releases in %v took %d commits, want at most %d", elapsed, commits, most)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if st := b.Stats(); st.FirstSeq != 51 || st.Records != 50 {
		t.Fatalf("after reopening: %+v; the last release before Close is lost", st)
	}
}

// A compaction copies keys in order and fills its pages: the copy uses no
// more disk than the original (bbolt's default would split every page in
// half, and a compacted buffer near max_bytes would start dropping).
func TestCompactFillsPages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	appendRounds(t, b, 200, 100, 200)
	before, err := b.Info()
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, _, err := Compact(path); err != nil {
		t.Fatal(err)
	}
	ro := openReadOnlyTest(t, path)
	after, err := ro.Info()
	ro.Close()
	if err != nil {
		t.Fatal(err)
	}
	if after.Records != before.Records || after.UsedBytes > before.UsedBytes {
		t.Fatalf("compaction: %d records in %d bytes in use, was %d in %d", after.Records, after.UsedBytes, before.Records, before.UsedBytes)
	}
	checkConsistency(t, path)
	checkCounters(t, path)
}

// A compaction while ferry runs (a backlog drained to a few records) starts
// a file without retired batches; the committer's counters must say so.
func TestCompactionWhileRunningKeepsCounters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{CompactMinSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	appendRounds(t, b, 1, 3000, 1000) // ~3 MB
	full := fileSize(t, path)
	b.Release(2500) // 500 records, under 1 MiB, left: the backlog has drained
	if err := b.flush(ctx); err != nil {
		t.Fatal(err)
	}
	b.Release(2600)
	if _, err := b.AppendWait(ctx, rec(1)); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if size := fileSize(t, path); size > full/2 {
		t.Fatalf("file %d bytes, was %d: not compacted", size, full)
	}
	checkConsistency(t, path)
	checkCounters(t, path)
}

// A broken batch dead-lettered in the middle leaves a gap in the keys; a
// release that stops before the gap retires the batch before it, and
// reclaim must still see that batch as retired.
func TestRetiredBeforeAGap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 1; i <= 3; i++ { // three batches: 1, 2, 3
		if _, err := b.AppendWait(ctx, rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	damageBatch(t, path, 2, func(v []byte) { v[0] = 0 })
	if b, err = Open(path, Options{}); err != nil {
		t.Fatal(err)
	}
	b.DeadLetter(2, "test", errors.New("broken"))
	b.Release(1)
	if err := b.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.AppendWait(ctx, rec(4)); err != nil { // reclaims batch 1
		t.Fatal(err)
	}
	b.Close()
	ro := openReadOnlyTest(t, path)
	defer ro.Close()
	rep, err := ro.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Problems {
		if strings.Contains(p, "retired") {
			t.Fatalf("verify: %s", p)
		}
	}
}

// A live reader (ferry buffer export on a running ferry) goes on across a
// compaction that replaces the file under it.
func TestEachAcrossCompaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{CompactMinSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	appendRounds(t, b, 1, 3000, 1000) // ~3 MB
	full := fileSize(t, path)
	var last uint64
	_, err = b.Each(func(r Record) error {
		if r.Seq == 1 { // the backlog drains to 500 records: the file is compacted
			b.Release(2500)
			for range 2 { // the commit, then what follows its compaction
				if err := b.flush(context.Background()); err != nil {
					return err
				}
			}
			if size := fileSize(t, path); size > full/2 {
				return fmt.Errorf("file %d bytes, was %d: not compacted", size, full)
			}
		}
		if r.Seq <= last {
			return fmt.Errorf("seq %d after %d", r.Seq, last)
		}
		last = r.Seq
		return nil
	})
	if err != nil || last != 3000 {
		t.Fatalf("each: %v, last seq %d", err, last)
	}
}

// A compaction run as root (sudo ferry buffer compact) keeps the file's
// owner: the service's user must still open it afterwards.
func TestCompactKeepsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to own a file as someone else")
	}
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b, 1, 10)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 4242, 4343); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Compact(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 4242 || st.Gid != 4343 {
		t.Fatalf("after compaction the file belongs to %d:%d, want 4242:4343", st.Uid, st.Gid)
	}
}
