package buffer

import (
	"context"
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
