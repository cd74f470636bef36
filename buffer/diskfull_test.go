package buffer

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// smallFS mounts a tmpfs of size bytes for the test, or skips: mounting
// needs root. FERRY_REQUIRE_ROOT (set by CI) turns the skip into a failure.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput()
	if err != nil {
		if os.Getenv("FERRY_REQUIRE_ROOT") != "" {
			t.Fatalf("mount a %s tmpfs: %v: %s", size, err, out)
		}
		t.Skipf("cannot mount a tmpfs (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// At ENOSPC nothing is acknowledged that is not durable, nothing fails
// for good and ferry does not stop: records wait in memory (and the broker
// holds the rest), the forwarder goes on delivering and releasing, and
// commits succeed again by themselves once the deliveries freed space in
// the file, without any space freed outside it.
func TestDiskFullStopsAcknowledgingAndRecovers(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts Options
	}{
		{"strict", Options{}},
		{"delayed", Options{WriteDelay: 20 * time.Millisecond}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			path := filepath.Join(smallFS(t, "4m"), "buffer.db")
			opts := mode.opts
			opts.QueueSize, opts.QueueBytes = 100000, 64<<20
			b, err := Open(path, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()

			var acked, failed atomic.Int64
			var mu sync.Mutex
			var firstErr error
			done := func(_ uint64, err error) {
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				acked.Add(1)
			}
			// Kafka is down: append until the disk is full and the
			// commits fail.
			appended := 0
			deadline := time.Now().Add(30 * time.Second)
			// (Until the commits fail and records wait: the first
			// failure gives the reserve file's space to the buffer.)
			failingSince := time.Time{}
			for failingSince.IsZero() || time.Since(failingSince) < 1500*time.Millisecond {
				if st := b.Stats(); st.CommitError == "" || acked.Load() == int64(appended) {
					failingSince = time.Time{}
				} else if failingSince.IsZero() {
					failingSince = time.Now()
				}
				if time.Now().After(deadline) {
					t.Fatalf("no failed commit after %d records", appended)
				}
				if !failingSince.IsZero() {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				for range 1000 {
					if err := b.Append(bigRec(appended, 200), done); err != nil {
						t.Fatalf("append %d: %v", appended, err)
					}
					appended++
				}
				time.Sleep(5 * time.Millisecond)
			}
			st := b.Stats()
			t.Logf("disk full after %d records: %d acknowledged, %d in memory; %s", appended, acked.Load(), st.TailRecords, st.CommitError)
			if !st.DiskFull {
				t.Errorf("Stats.DiskFull is false with %q", st.CommitError)
			}
			if n := failed.Load(); n > 0 {
				t.Fatalf("%d records failed for good (%v); they must wait", n, firstErr)
			}
			before := acked.Load()
			if before >= int64(appended) {
				t.Fatalf("all %d records acknowledged on a full disk", appended)
			}

			// Kafka is back: deliver everything in order and release it.
			var after uint64
			for delivered := 0; delivered < appended; {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				recs, err := b.Read(ctx, after, 1000, 0, nil)
				cancel()
				if err != nil {
					t.Fatalf("read after %d (%d of %d delivered): %v", after, delivered, appended, err)
				}
				for _, r := range recs {
					if want := bigRec(delivered, 200); string(r.Payload) != string(want.Payload) {
						t.Fatalf("record %d: got %.8s, want %.8s", r.Seq, r.Payload, want.Payload)
					}
					delivered++
				}
				after = recs[len(recs)-1].Seq
				b.Release(after)
			}
			waitUntil(t, "every record acknowledged", func() bool { return acked.Load() == int64(appended) })
			waitUntil(t, "commits to succeed again", func() bool { return b.Stats().CommitError == "" })
			if n := failed.Load(); n > 0 {
				t.Fatalf("%d records failed", n)
			}
			// And the buffer takes records again, durably.
			if _, err := b.AppendWait(context.Background(), bigRec(appended, 200)); err != nil {
				t.Fatalf("append after recovery: %v", err)
			}
		})
	}
}

// A dead-letter replay while commits fail (disk full) with records waiting
// in the tail waits for the tail: it must not number records after the
// tail's on disk, which would make a release of the replayed record
// acknowledge the tail's unsent records.
func TestReplayWhileDiskFullAcknowledgesNothingUnsent(t *testing.T) {
	dir := smallFS(t, "4m")
	path := filepath.Join(dir, "buffer.db")
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 512<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := Options{WriteDelay: 20 * time.Millisecond, QueueSize: 100000, QueueBytes: 64 << 20}
	b, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// one dead letter
	seq0, err := b.AppendWait(context.Background(), bigRec(0, 200))
	if err != nil {
		t.Fatal(err)
	}
	b.DeadLetter(seq0, Reason("invalid_record"), errors.New("test"))
	if err := b.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	acked := map[uint64]bool{}
	done := func(seq uint64, err error) {
		if err == nil {
			mu.Lock()
			acked[seq] = true
			mu.Unlock()
		}
	}
	n := 1
	for b.Stats().CommitError == "" {
		for range 1000 {
			b.Append(bigRec(n, 200), done)
			n++
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(3500 * time.Millisecond) // a few failures: the backoff grows
	os.Remove(filler)                   // space comes back, before the tail's next attempt
	st := b.Stats()
	t.Logf("failing: %s; tail %d records, first pending seq %d, last %d", st.CommitError, st.TailRecords, st.FirstSeq, st.LastSeq)
	res, err := b.ReplayDeadLetters(context.Background(), DeadLetterFilter{})
	t.Logf("replay: %+v err %v", res, err)
	st = b.Stats()
	t.Logf("after replay: tail %d, records %d, LastSeq %d, commit error %q", st.TailRecords, st.Records, st.LastSeq, st.CommitError)
	// The forwarder reads from the start, delivers in order, releases.
	var after uint64
	var read []uint64
	for i := 0; i < 1000; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		recs, err := b.Read(ctx, after, 1000, 0, nil)
		cancel()
		if err != nil || len(recs) == 0 {
			break
		}
		for _, r := range recs {
			read = append(read, r.Seq)
		}
		after = recs[len(recs)-1].Seq
		b.Release(after)
	}
	time.Sleep(200 * time.Millisecond)
	readSet := map[uint64]bool{}
	for _, s := range read {
		readSet[s] = true
	}
	mu.Lock()
	lost := 0
	for s := range acked {
		if !readSet[s] {
			lost++
		}
	}
	mu.Unlock()
	t.Logf("read %d records (last %d); acknowledged %d of %d; acknowledged but never read: %d", len(read), after, len(acked), n-1, lost)
	if lost > 0 {
		t.Errorf("%d records acknowledged to the source without being delivered or written", lost)
	}
}

// A dead letter for a record of the tail while commits leave the tail out.
func TestDeadLetterInTailWhileFailingDoesNotSpin(t *testing.T) {
	dir := smallFS(t, "4m")
	path := filepath.Join(dir, "buffer.db")
	filler := filepath.Join(dir, "filler")
	os.WriteFile(filler, make([]byte, 512<<10), 0o600)
	b, err := Open(path, Options{WriteDelay: 20 * time.Millisecond, QueueSize: 100000, QueueBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	n := 0
	for b.Stats().CommitError == "" {
		for range 1000 {
			b.Append(bigRec(n, 200), func(uint64, error) {})
			n++
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(3500 * time.Millisecond)
	os.Remove(filler)
	st := b.Stats()
	b.DeadLetter(st.LastSeq, Reason("message_too_large"), errors.New("test"))
	c0, f0 := st.Commits, st.CommitFailures
	time.Sleep(2 * time.Second)
	st = b.Stats()
	t.Logf("in 2 s: %d commits, %d failed commits; tail %d; error %q", st.Commits-c0, st.CommitFailures-f0, st.TailRecords, st.CommitError)
	if n := st.Commits - c0 + st.CommitFailures - f0; n > 100 {
		t.Fatalf("%d commits in 2 s while the disk refuses: the committer spins", n)
	}
}
