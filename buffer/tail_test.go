package buffer

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// appended collects the callbacks of a test's appends.
type appended struct {
	mu   sync.Mutex
	seqs []uint64
	errs []error
}

func (a *appended) done(seq uint64, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seqs = append(a.seqs, seq)
	a.errs = append(a.errs, err)
}

func (a *appended) get() ([]uint64, []error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.seqs), slices.Clone(a.errs)
}

// waitFor waits until n callbacks ran.
func (a *appended) waitFor(t *testing.T, n int) []uint64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		seqs, errs := a.get()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("callback error: %v", err)
			}
		}
		if len(seqs) >= n {
			return seqs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d callbacks after 5s, want %d", len(seqs), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// With a write delay, records delivered before their deadline are durable
// at their release (their callbacks run, in order) and never written: the
// file is the same, byte for byte, after they came and went.
func TestReleasedBeforeDeadlineNeverWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	b, err := Open(path, Options{WriteDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var a appended
	for i := range 1000 {
		if err := b.Append(rec(i), a.done); err != nil {
			t.Fatal(err)
		}
	}
	if st := b.Stats(); st.Records != 1000 || st.FirstSeq != 1 || st.LastSeq != 1000 {
		t.Fatalf("stats %+v: want 1000 records held, 1 to 1000", st)
	}
	got := readAll(t, b)
	if len(got) != 1000 || got[0].Seq != 1 || string(got[999].Payload) != string(rec(999).Payload) {
		t.Fatalf("read %d records from memory", len(got))
	}
	if seqs, _ := a.get(); len(seqs) != 0 {
		t.Fatalf("%d records acknowledged before their delivery or a commit", len(seqs))
	}
	b.Release(600)
	if seqs := a.waitFor(t, 600); len(seqs) != 600 || !slices.IsSorted(seqs) || seqs[599] != 600 {
		t.Fatalf("after Release(600): callbacks %v...", seqs[:min(len(seqs), 5)])
	}
	b.Release(1000)
	seqs := a.waitFor(t, 1000)
	for i, seq := range seqs {
		if seq != uint64(i+1) {
			t.Fatalf("callback %d got seq %d: not in append order", i, seq)
		}
	}
	if st := b.Stats(); st.Records != 0 || st.Commits != 0 {
		t.Fatalf("stats %+v: want nothing held, no commit", st)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("the file changed though every record was delivered before its deadline")
	}
}

// Records not delivered by their deadline are written in one commit, and
// their callbacks run after it; they are there after a restart.
func TestUndeliveredWrittenAtDeadline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	b, err := Open(path, Options{WriteDelay: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var a appended
	start := time.Now()
	for i := range 10 {
		if err := b.Append(rec(i), a.done); err != nil {
			t.Fatal(err)
		}
	}
	a.waitFor(t, 10)
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Fatalf("acknowledged after %v, before the write delay", waited)
	}
	if st := b.Stats(); st.Commits != 1 || st.Records != 10 {
		t.Fatalf("stats %+v: want the 10 records in one commit", st)
	}
	b.Close()
	b, err = Open(path, Options{WriteDelay: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := readAll(t, b); len(got) != 10 || got[0].Seq != 1 || got[9].Seq != 10 {
		t.Fatalf("after restart: %d records", len(got))
	}
}

// Sequence numbers stay unique and increasing across restarts for records
// that were never written, and for the strict mode after them.
func TestSeqUniqueAcrossRestartsWithoutWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	var last uint64
	for round, delay := range []time.Duration{time.Hour, time.Hour, 0, time.Hour} {
		b, err := Open(path, Options{WriteDelay: delay})
		if err != nil {
			t.Fatal(err)
		}
		var a appended
		for i := range 5 {
			if err := b.Append(rec(i), a.done); err != nil {
				t.Fatal(err)
			}
		}
		got := readAll(t, b)
		if len(got) != 5 {
			t.Fatalf("round %d: read %d records", round, len(got))
		}
		b.Release(got[4].Seq)
		seqs := a.waitFor(t, 5)
		if seqs[0] <= last {
			t.Fatalf("round %d (write delay %v): seq %d after %d of an earlier run", round, delay, seqs[0], last)
		}
		last = seqs[4]
		b.Close()
	}
}

// A dead letter for a record still in memory writes it, into the
// dead-letter bucket, even with a release past it queued after.
func TestDeadLetterFromMemory(t *testing.T) {
	b, _ := openTestWith(t, Options{WriteDelay: time.Hour})
	var a appended
	for i := range 3 {
		if err := b.Append(rec(i), a.done); err != nil {
			t.Fatal(err)
		}
	}
	if got := readAll(t, b); len(got) != 3 {
		t.Fatalf("read %d", len(got))
	}
	b.DeadLetter(2, "rejected", nil)
	b.Release(3)
	seqs := a.waitFor(t, 3)
	if !slices.Equal(seqs, []uint64{1, 2, 3}) {
		t.Fatalf("callbacks %v", seqs)
	}
	if err := b.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := b.Stats()
	if st.DeadLetterRecords != 1 || st.DeadLettered["rejected"] != 1 || st.Records != 0 {
		t.Fatalf("stats %+v: want the record in the dead-letter bucket, nothing else held", st)
	}
	var bodies []string
	if _, err := b.EachDeadLetter(DeadLetterFilter{}, func(e DeadLetterEntry) error {
		bodies = append(bodies, string(e.Record.Payload))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(bodies) != 1 || bodies[0] != string(rec(1).Payload) {
		t.Fatalf("dead letters %q", bodies)
	}
}

// Remove makes a record of the tail durable; its callback waits for the
// ones before it, and what is left is written at Close.
func TestRemoveFromMemory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	b, err := Open(path, Options{WriteDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var a appended
	for i := range 3 {
		if err := b.Append(rec(i), a.done); err != nil {
			t.Fatal(err)
		}
	}
	b.Remove(2)
	time.Sleep(20 * time.Millisecond)
	if seqs, _ := a.get(); len(seqs) != 0 {
		t.Fatalf("callbacks %v ran before the one of record 1", seqs)
	}
	b.Remove(1)
	if seqs := a.waitFor(t, 2); !slices.Equal(seqs, []uint64{1, 2}) {
		t.Fatalf("callbacks %v", seqs)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if seqs := a.waitFor(t, 3); seqs[2] != 3 {
		t.Fatalf("callbacks %v", seqs)
	}
	b, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := readAll(t, b); len(got) != 1 || got[0].Seq != 3 {
		t.Fatalf("after restart: %+v", got)
	}
}

// While records reach their deadline undelivered (Kafka down), the write
// delay doubles, up to 8 times WriteDelay: fewer, larger commits. The
// first delivery from memory sets it back.
func TestWriteDelayAdaptsToAnOutage(t *testing.T) {
	const delay = 50 * time.Millisecond
	b, _ := openTestWith(t, Options{WriteDelay: delay})
	var a appended
	start := time.Now()
	n := 0
	for time.Since(start) < 2*time.Second {
		if err := b.Append(rec(n), a.done); err != nil {
			t.Fatal(err)
		}
		n++
		time.Sleep(5 * time.Millisecond)
	}
	a.waitFor(t, n)
	// At a fixed 50ms: 40 commits. Doubling: 50, 100, 200, 400, 400...
	if c := b.Stats().Commits; c > 16 {
		t.Fatalf("%d commits in 2s of undelivered records; the delay did not grow", c)
	}
	got := readAll(t, b)
	b.Release(got[len(got)-1].Seq)
	// A record delivered from memory: the delay is back at 50ms.
	if err := b.Append(rec(n), a.done); err != nil {
		t.Fatal(err)
	}
	got = readAll(t, b)
	b.Release(got[len(got)-1].Seq)
	a.waitFor(t, n+1)
	sent := time.Now()
	if err := b.Append(rec(n+1), a.done); err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, n+2)
	if waited := time.Since(sent); waited > 300*time.Millisecond {
		t.Fatalf("a record waited %v for its commit after deliveries resumed; want about %v", waited, delay)
	}
}

// MaxTailRecords writes the tail once that many records wait, whatever
// their deadline.
func TestMaxTailRecordsWritesEarly(t *testing.T) {
	b, _ := openTestWith(t, Options{WriteDelay: time.Hour, MaxTailRecords: 10})
	var a appended
	for i := range 10 {
		if err := b.Append(rec(i), a.done); err != nil {
			t.Fatal(err)
		}
	}
	a.waitFor(t, 10)
	if st := b.Stats(); st.Commits != 1 || st.Records != 10 || st.TailRecords != 0 {
		t.Fatalf("stats %+v: want the 10 records written in one commit", st)
	}
}

// Over a link whose acknowledgements take longer than WriteDelay, the
// delay follows them (twice the last one's latency): records are
// delivered from memory, not written.
func TestWriteDelayFollowsSlowAcknowledgements(t *testing.T) {
	const delay, latency = 50 * time.Millisecond, 120 * time.Millisecond
	b, _ := openTestWith(t, Options{WriteDelay: delay})
	ctx := context.Background()
	var a appended
	var after uint64
	send := func(i int) { // append, and deliver it latency later
		if err := b.Append(rec(i), a.done); err != nil {
			t.Fatal(err)
		}
		time.Sleep(latency)
		got, err := b.Read(ctx, after, 10, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		after = got[len(got)-1].Seq
		b.Release(after)
		a.waitFor(t, i+1)
	}
	for i := range 4 { // the delay grows past the latency (50, 100, 200...)
		send(i)
	}
	c0 := b.Stats().Commits
	for i := 4; i < 10; i++ {
		send(i)
	}
	if c := b.Stats().Commits - c0; c != 0 {
		t.Fatalf("%d commits while every record was delivered %v after its append (write delay %v)", c, latency, delay)
	}
}
