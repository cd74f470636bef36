package buffer

import (
	"context"
	"testing"
	"time"
)

// A dead letter followed by its Release (the forwarder's own order) with a
// live record right behind it in the same batch moves the head past the
// dead record: the committer does not find the release pending and commit
// again and again with nothing to do.
func TestReleaseAfterDeadLetterLeavesCommitterIdle(t *testing.T) {
	b, _ := openTestWith(t, Options{}) // strict mode; same with WriteDelay
	ctx := context.Background()
	var a appended
	for i := range 6 {
		if err := b.Append(rec(i), a.done); err != nil {
			t.Fatal(err)
		}
	}
	a.waitFor(t, 6)
	b.DeadLetter(5, ReasonUndecodable, nil)
	b.Release(5)
	if err := b.flush(ctx); err != nil {
		t.Fatal(err)
	}
	c0 := b.Stats().Commits
	time.Sleep(time.Second)
	c1 := b.Stats().Commits
	b.mu.Lock()
	head, rel := b.st.head, b.releaseTo
	b.mu.Unlock()
	t.Logf("head %d releaseTo %d; commits in 1s idle: %d", head, rel, c1-c0)
	if c1-c0 > 1 {
		t.Fatalf("%d commits in 1s with nothing to write", c1-c0)
	}
}

// The same with Block at max_bytes (no room): no busy loop of fsyncs, and
// Close returns.
func TestReleaseAfterDeadLetterIdleWithBlock(t *testing.T) {
	b, _ := openTestWith(t, Options{WhenFull: Block, MaxBytes: 2000})
	var a appended
	for i := range 80 {
		if err := b.Append(rec(i), a.done); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	b.DeadLetter(10, ReasonUndecodable, nil)
	b.Release(10)
	time.Sleep(300 * time.Millisecond)
	c0 := b.Stats().Commits
	time.Sleep(time.Second)
	c1 := b.Stats().Commits
	b.mu.Lock()
	head, rel, cnt, room := b.st.head, b.releaseTo, b.st.count, b.roomLocked()
	b.mu.Unlock()
	t.Logf("head %d releaseTo %d count %d room %d; commits in 1s: %d", head, rel, cnt, room, c1-c0)
	if c1-c0 > 5 {
		t.Fatalf("%d commits in 1s with nothing to write", c1-c0)
	}
}

// A Release that comes while a commit applies the dead letters asked
// before it (the max_age tick's commit among them) still sees them: a
// record of the tail that is to be dead-lettered is never taken as
// delivered, so it is written and moved to the dead-letter bucket, never
// acknowledged and lost.
func TestDeadLetterThenReleaseDuringCommitKeepsRecord(t *testing.T) {
	b, _ := openTestWith(t, Options{WriteDelay: time.Hour, MaxAge: deadLetterMaxAge})
	const n = 1000
	var acked int
	for i := range n {
		r := rec(i)
		r.ReceivedAt = time.Now()
		var seq uint64
		done := make(chan error, 1)
		if err := b.Append(r, func(s uint64, err error) { done <- err }); err != nil {
			t.Fatal(err)
		}
		b.mu.Lock()
		seq = b.next - 1
		b.mu.Unlock()
		b.DeadLetter(seq, Reason("invalid_topic"), nil) // the forwarder's order
		b.Release(seq)
		if err := <-done; err == nil {
			acked++
		}
	}
	if err := b.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := b.Stats()
	t.Logf("%d dead letters asked, %d callbacks nil; dead-letter bucket holds %d", n, acked, st.DeadLetterRecords)
	if st.DeadLetterRecords != n {
		t.Fatalf("%d of %d dead-lettered records acknowledged and gone", n-int(st.DeadLetterRecords), n)
	}
}

// deadLetterMaxAge makes the max_age tick commit often.
var deadLetterMaxAge = 10 * time.Millisecond

// A live replay takes the sequence numbers after the tail's; the tail's
// written entries are taken off it before the appends the replay held go
// on (even while another caller runs callbacks), so the tail stays
// consecutive and Read skips nothing.
func TestReplayKeepsTailConsecutive(t *testing.T) {
	b, _ := openTestWith(t, Options{WriteDelay: time.Hour})
	ctx := context.Background()
	var a appended
	b.Append(rec(1), a.done) // seq 1
	b.DeadLetter(1, Reason("x"), nil)
	if err := b.flush(ctx); err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, 1)
	b.Append(rec(2), a.done) // seq 2, in the tail
	got, _ := b.Read(ctx, 0, 10, 0, nil)
	if len(got) != 1 || got[0].Seq != 2 {
		t.Fatalf("read %v", got)
	}
	b.fireMu.Lock() // a settle in progress elsewhere (a Release running callbacks)
	res, err := b.ReplayDeadLetters(ctx, DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("replayed %+v", res) // seq 3
	for i := 4; i <= 6; i++ {
		b.Append(rec(i), a.done) // seqs 4, 5, 6
	}
	b.mu.Lock()
	var seqs []uint64
	for _, e := range b.tl.live() {
		seqs = append(seqs, e.seq)
	}
	b.mu.Unlock()
	t.Logf("tail seqs %v", seqs)
	got, _ = b.Read(ctx, 2, 10, 0, nil) // the replayed record, from disk
	after := got[len(got)-1].Seq
	rctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	got, _ = b.Read(rctx, after, 10, 0, nil)
	cancel()
	b.fireMu.Unlock()
	var read []uint64
	for _, r := range got {
		read = append(read, r.Seq)
	}
	t.Logf("Read(after=%d) = %v", after, read)
	if len(read) == 0 || read[0] != after+1 {
		b.Release(read[len(read)-1]) // the forwarder delivered what it read
		time.Sleep(50 * time.Millisecond)
		s, _ := a.get()
		t.Fatalf("Read skipped record %d; after Release(%d) callbacks ran for %v: %d acknowledged, never read",
			after+1, read[len(read)-1], s, after+1)
	}
}

// The offline replay (ferry buffer dlq replay while ferry is stopped)
// numbers the records above the reservation: the numbers below it may have
// gone to records the last run delivered from memory and never wrote.
func TestOfflineReplayAboveReservedSeqs(t *testing.T) {
	path := t.TempDir() + "/b.db"
	b, err := Open(path, Options{WriteDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var a appended
	b.Append(rec(1), a.done) // seq 1, dead-lettered on disk
	b.DeadLetter(1, Reason("x"), nil)
	if err := b.flush(ctx); err != nil {
		t.Fatal(err)
	}
	b.Append(rec(2), a.done) // seqs 2, 3: delivered from memory, never written
	b.Append(rec(3), a.done)
	got, _ := b.Read(ctx, 1, 10, 0, nil)
	b.Release(got[len(got)-1].Seq)
	a.waitFor(t, 3)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := ReplayDeadLetters(path, DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if res.FirstSeq <= 3 {
		t.Fatalf("offline replay gave the record seq %d, already given to a record delivered to Kafka", res.FirstSeq)
	}
}
