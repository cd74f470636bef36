package buffer

import (
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeWall is a wall clock the test steps.
type fakeWall struct {
	mu  sync.Mutex
	off time.Duration
}

func (f *fakeWall) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return time.Now().Add(f.off)
}

func (f *fakeWall) step(d time.Duration) {
	f.mu.Lock()
	f.off += d
	f.mu.Unlock()
}

// A board boots with a stale clock, receives records, then NTP steps the
// clock forward by 7 days: those records are seconds old, not days, and
// max_age keeps them, also across a restart; they expire once they really
// are max_age old.
func TestClockStepDoesNotExpireRecords(t *testing.T) {
	const maxAge = 10 * time.Second
	wall := &fakeWall{}
	opts := Options{MaxAge: maxAge, Now: wall.now}
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	appendNow := func(from, n int) {
		for i := range n {
			r := rec(from + i)
			r.ReceivedAt = wall.now()
			if _, err := b.AppendWait(t.Context(), r); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendNow(0, 10)
	time.Sleep(1200 * time.Millisecond) // the committer looks at the clock
	wall.step(7 * 24 * time.Hour)
	time.Sleep(1500 * time.Millisecond) // it notices; max_age is applied every second
	appendNow(10, 5)
	if got := b.Stats(); got.Records != 15 || got.Dropped[DropMaxAge] != 0 || got.OldestAge > maxAge {
		t.Fatalf("after a 7-day step: %d records, %d dropped by max_age, the oldest %v old; want 15, 0 and seconds", got.Records, got.Dropped[DropMaxAge], got.OldestAge)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	// The step is kept across a restart.
	b, err = Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	time.Sleep(1500 * time.Millisecond)
	if time.Since(start) > maxAge-2*time.Second {
		t.Skipf("too slow a machine for this test's timing: %v passed", time.Since(start))
	}
	if got := b.Stats(); got.Records != 15 || got.Dropped[DropMaxAge] != 0 {
		t.Fatalf("after a restart: %d records, %d dropped by max_age; want 15 and 0", got.Records, got.Dropped[DropMaxAge])
	}
	// Once they are max_age old, they go.
	waitUntil(t, "the records to expire", func() bool { return b.Stats().Dropped[DropMaxAge] == 15 })
	if age := time.Since(start); age < maxAge {
		t.Fatalf("expired after %v, before max_age", age)
	}
}

// A board that boots offline with a stale clock buffers records; it
// reboots, and NTP syncs before ferry starts again: no watch saw the
// step. The records received with the clock unsynchronized have no age
// max_age can trust: they stay (max_bytes still bounds them).
func TestUnsyncedRecordsDoNotExpire(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	stale := time.Now().Add(-30 * 24 * time.Hour) // the boot's stale clock, as seen after the sync
	for i := range 10 {
		r := rec(i)
		r.ReceivedAt, r.ClockUnsynced = stale.Add(time.Duration(i)*time.Second), true
		if _, err := b.AppendWait(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b, err = Open(path, Options{MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	time.Sleep(1500 * time.Millisecond) // max_age is applied every second
	if st := b.Stats(); st.Records != 10 || st.Dropped[DropMaxAge] != 0 {
		t.Fatalf("unsynchronized records: %d left, %d dropped by max_age; want 10 and 0", st.Records, st.Dropped[DropMaxAge])
	}
}
