package buffer

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if path := os.Getenv("FERRY_BUFFER_CRASH_CHILD"); path != "" {
		crashChild(path)
		return
	}
	if path := os.Getenv("FERRY_BUFFER_DAMAGE_CHILD"); path != "" {
		damageChild(path)
		return
	}
	// The model test fsyncs on every step; 30 runs keep `go test ./...`
	// quick. Deeper: go test ./buffer -run FIFO -rapid.checks=1000
	flag.Parse()
	if f := flag.Lookup("rapid.checks"); f != nil && f.Value.String() == f.DefValue {
		f.Value.Set("30")
	}
	goleak.VerifyTestMain(m)
}

// openTest opens a buffer in a temp dir and checks the file's consistency
// after the test closed it.
func openTest(t *testing.T) (*Buffer, string) {
	t.Helper()
	return openTestWith(t, Options{})
}

// openTestWith is openTest with options.
func openTestWith(t *testing.T, opts Options) (*Buffer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.Close()
		checkConsistency(t, path)
	})
	return b, path
}

func checkConsistency(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Errorf("reopen %s for check: %v", path, err)
		return
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	}); err != nil {
		t.Errorf("consistency check of %s: %v", path, err)
	}
}

// checkCounters runs the buffer's own full verification of a closed file:
// the meta counters (records, bytes, retired batches) against the batches.
func checkCounters(t interface {
	Helper()
	Errorf(string, ...any)
}, path string) {
	t.Helper()
	r, err := OpenReadOnly(path)
	if err != nil {
		t.Errorf("open %s for verification: %v", path, err)
		return
	}
	defer r.Close()
	rep, err := r.Verify(context.Background())
	if err != nil || !rep.OK() {
		t.Errorf("verify %s: %v %+v", path, err, rep)
	}
}

// appendRounds appends rounds*per records with size-byte payloads, per at a
// time: each round is queued at once (so the committer makes few commits
// of it) and waited for, so every record is durable when it returns.
func appendRounds(tb testing.TB, b *Buffer, rounds, per, size int) {
	tb.Helper()
	payload := make([]byte, size)
	for range rounds {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var first error
		for range per {
			wg.Add(1)
			if err := b.Append(&Record{Topic: "t", Payload: payload}, func(_ uint64, err error) {
				if err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
				}
				wg.Done()
			}); err != nil {
				tb.Fatal(err)
			}
		}
		wg.Wait()
		if first != nil {
			tb.Fatal(first)
		}
	}
}

func rec(i int) *Record {
	return &Record{
		Topic:      fmt.Sprintf("sensors/dev-%02d/telemetry", i%20),
		Payload:    []byte(strconv.Itoa(i)),
		QoS:        1,
		ReceivedAt: time.Unix(1700000000, int64(i)),
	}
}

func readAll(t *testing.T, b *Buffer) []Record {
	t.Helper()
	var out []Record
	var after uint64
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		recs, err := b.Read(ctx, after, 1000, 0, nil)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, recs...)
		after = recs[len(recs)-1].Seq
	}
}

func TestRecordRoundTrip(t *testing.T) {
	in := Record{
		Topic: "a/b", Payload: []byte{0, 1, 2}, QoS: 2, Retain: true,
		ReceivedAt:  time.Unix(1700000000, 123456789),
		ContentType: "application/json", ResponseTopic: "r/t", CorrelationData: []byte("cd"),
		PayloadUTF8:    true,
		UserProperties: []Property{{"k", "v"}, {"k", "w"}},
		ClockUnsynced:  true,
	}
	out, err := decode(appendEncoded(nil, &in))
	if err != nil {
		t.Fatal(err)
	}
	if !in.ReceivedAt.Equal(out.ReceivedAt) {
		t.Fatalf("ReceivedAt %v, want %v", out.ReceivedAt, in.ReceivedAt)
	}
	out.ReceivedAt = in.ReceivedAt
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
	}
}

func TestDecodeRejectsDamage(t *testing.T) {
	enc := appendEncoded(nil, rec(7))
	for i := range enc {
		bad := append([]byte(nil), enc...)
		bad[i] ^= 0x40
		if _, err := decode(bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flipping byte %d: err %v, want ErrCorrupt", i, err)
		}
	}
	for n := range enc {
		if _, err := decode(enc[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d: err %v, want ErrCorrupt", n, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(appendEncoded(nil, rec(1)))
	f.Add(appendEncoded(nil, &Record{Topic: "t", UserProperties: []Property{{"a", "b"}}}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decode(data)
		if err != nil {
			return
		}
		// Whatever decodes must encode back to the same bytes.
		if got := appendEncoded(nil, &r); string(got) != string(data) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", got, data)
		}
	})
}

func TestAppendReadReleaseReopen(t *testing.T) {
	b, path := openTest(t)
	ctx := context.Background()
	for i := 1; i <= 100; i++ {
		seq, err := b.AppendWait(ctx, rec(i))
		if err != nil {
			t.Fatal(err)
		}
		if seq != uint64(i) {
			t.Fatalf("seq %d, want %d", seq, i)
		}
	}
	got := readAll(t, b)
	if len(got) != 100 || got[0].Seq != 1 || got[99].Seq != 100 || string(got[41].Payload) != "42" {
		t.Fatalf("read %d records, first %+v", len(got), got[0])
	}
	b.Release(60)
	// Release is applied with the next commit; an append forces one.
	if _, err := b.AppendWait(ctx, rec(101)); err != nil {
		t.Fatal(err)
	}
	st := b.Stats()
	if st.Records != 41 || st.FirstSeq != 61 || st.LastSeq != 101 {
		t.Fatalf("stats after release: %+v", st)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	b2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if st2 := b2.Stats(); st2.Records != st.Records || st2.Bytes != st.Bytes || st2.FirstSeq != 61 || st2.LastSeq != 101 {
		t.Fatalf("stats after reopen %+v, before %+v", st2, st)
	}
	got = readAll(t, b2)
	if len(got) != 41 || got[0].Seq != 61 || string(got[0].Payload) != "61" {
		t.Fatalf("after reopen read %d records, first %+v", len(got), got[0])
	}
	// Sequence numbers keep growing after everything was released.
	b2.Release(101)
	seq, err := b2.AppendWait(ctx, rec(102))
	if err != nil || seq != 102 {
		t.Fatalf("append after release: seq %d err %v", seq, err)
	}
}

func TestConcurrentAppendsGroupCommitInOrder(t *testing.T) {
	b, _ := openTest(t)
	const writers, per = 16, 200
	var mu sync.Mutex
	var order []uint64
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				r := rec(w*per + i)
				done := make(chan error, 1)
				err := b.Append(r, func(seq uint64, err error) {
					mu.Lock()
					order = append(order, seq)
					mu.Unlock()
					done <- err
				})
				if err != nil {
					t.Error(err)
					return
				}
				if err := <-done; err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(order) != writers*per {
		t.Fatalf("%d callbacks, want %d", len(order), writers*per)
	}
	for i, seq := range order {
		if seq != uint64(i+1) {
			t.Fatalf("callback %d had seq %d: callbacks out of order", i, seq)
		}
	}
	if st := b.Stats(); st.Commits >= writers*per {
		t.Fatalf("%d commits for %d appends: no group commit", st.Commits, writers*per)
	}
}

func TestReadWaitsAndCloseWakes(t *testing.T) {
	b, _ := openTest(t)
	got := make(chan error, 1)
	go func() {
		recs, err := b.Read(context.Background(), 0, 10, 0, nil)
		if err == nil && (len(recs) != 1 || recs[0].Seq != 1) {
			err = fmt.Errorf("read %+v", recs)
		}
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if _, err := b.AppendWait(context.Background(), rec(1)); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := b.Read(context.Background(), 1, 10, 0, nil)
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	b.Close()
	if err := <-got; !errors.Is(err, ErrClosed) {
		t.Fatalf("read on close: %v, want ErrClosed", err)
	}
	if err := b.Append(rec(2), func(uint64, error) {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v, want ErrClosed", err)
	}
}

func TestSecondOpenFailsFast(t *testing.T) {
	_, path := openTest(t)
	start := time.Now()
	_, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("second open took %v", time.Since(start))
	}
}

func TestFileMode(t *testing.T) {
	_, path := openTest(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestCorruptRecordIsDeadLettered(t *testing.T) {
	b, path := openTest(t)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := b.AppendWait(ctx, rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	damageBatch(t, path, 2, func(v []byte) { v[len(v)-6] ^= 0xff }) // inside the record, before the batch checksum

	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := readAll(t, b)
	if len(got) != 2 || got[0].Seq != 1 || got[1].Seq != 3 {
		t.Fatalf("read %+v, want seqs 1 and 3", got)
	}
	b.Release(3)
	if _, err := b.AppendWait(ctx, rec(4)); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.DeadLettered[ReasonUndecodable] != 1 || st.DeadLetterRecords != 1 || st.Records != 1 {
		t.Fatalf("stats %+v, want 1 dead-lettered as undecodable, 1 record", st)
	}
}

// A batch whose framing is broken cannot tell the sizes of its records:
// once it is dead-lettered and the rest released, the buffer holds no
// records and counts no bytes either, and verify finds it consistent.
// (The chaos suite's bit flips once left "0 records of 1 bytes".)
func TestBrokenBatchLeavesNoBytesWhenEmpty(t *testing.T) {
	b, path := openTest(t)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := b.AppendWait(ctx, rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	damageBatch(t, path, 2, func(v []byte) { v[0] = 0 }) // a broken header: none of it frames

	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, b)
	if len(got) != 2 || got[0].Seq != 1 || got[1].Seq != 3 {
		t.Fatalf("read %+v, want seqs 1 and 3", got)
	}
	b.Release(3)
	if _, err := b.AppendWait(ctx, rec(4)); err != nil { // a commit after the release
		t.Fatal(err)
	}
	b.Release(4)
	if _, err := b.AppendWait(ctx, rec(5)); err != nil {
		t.Fatal(err)
	}
	b.Release(5)
	waitUntil(t, "no records and no bytes", func() bool { st := b.Stats(); return st.Records == 0 && st.Bytes == 0 })
	b.Close()
	ro := openReadOnlyTest(t, path)
	defer ro.Close()
	rep, err := ro.Verify(ctx)
	if err != nil || len(rep.Problems) != 0 {
		t.Fatalf("verify: %+v, %v", rep.Problems, err)
	}
}

// crashChild appends records as fast as it can and prints each durable
// sequence number; every 2000 records it releases all but the last 1000,
// as a forwarder would, and prints "R seq" first. The parent kills it
// with SIGKILL.
func crashChild(path string) {
	delay, _ := time.ParseDuration(os.Getenv("FERRY_BUFFER_CRASH_DELAY"))
	b, err := Open(path, Options{LockTimeout: 10 * time.Second, WriteDelay: delay})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var first uint64 // this run's first sequence number (a restart skips the rest of the last run's reserved range)
	for i := 0; ; i++ {
		r := &Record{Topic: "crash", Payload: []byte(strconv.Itoa(i)), ReceivedAt: time.Now()}
		err := b.Append(r, func(seq uint64, err error) {
			if err != nil {
				return
			}
			mu.Lock()
			if first == 0 {
				first = seq
			}
			if seq%2000 == 0 {
				// A dead letter for a record of this run, as a forwarder
				// does before a release past it (not one in the skipped
				// range, which does not exist).
				dead := max(seq-1500, first)
				to := max(seq-1000, dead)
				fmt.Fprintf(out, "R %d\n", to)
				out.Flush()
				b.DeadLetter(dead, "crash", nil)
				b.Release(to)
			}
			fmt.Fprintf(out, "%d %s\n", seq, r.Payload)
			if len(r.Payload) > 0 && r.Payload[len(r.Payload)-1] == '0' {
				out.Flush()
			}
			mu.Unlock()
		})
		if err != nil {
			os.Exit(3)
		}
	}
}

// childCommand runs this test binary as a child process (see TestMain)
// with env added. Under qemu-user (go test -exec qemu-...),
// FERRY_TEST_EXEC names the emulator, since the kernel cannot run the
// child's binary itself.
func childCommand(env ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if emu := os.Getenv("FERRY_TEST_EXEC"); emu != "" {
		cmd = exec.Command(emu, os.Args[0], "-test.run=^$")
	} else {
		cmd = exec.Command(os.Args[0], "-test.run=^$")
	}
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// TestKillNineKeepsAcknowledged kills an appending (and releasing) child
// process at random moments and checks that every record it was told was
// durable and did not release is in the buffer, in order, exactly once,
// and that the counters agree with the records.
func TestKillNineKeepsAcknowledged(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	for _, delay := range []time.Duration{0, 20 * time.Millisecond} {
		t.Run(fmt.Sprintf("write_delay=%v", delay), func(t *testing.T) { killNine(t, delay) })
	}
}

// killNine is TestKillNineKeepsAcknowledged with one write delay. With a
// delay, the child's releases make records durable before they are
// written; those are not in the buffer, and the check skips them as
// released.
func killNine(t *testing.T, delay time.Duration) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	acked := map[uint64]string{}
	var released uint64 // the highest release the child asked for
	for round := range 5 {
		cmd := childCommand("FERRY_BUFFER_CRASH_CHILD="+path, "FERRY_BUFFER_CRASH_DELAY="+delay.String())
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// The kill comes at a random moment after the child's first
		// acknowledgement (a slow start, as under qemu, must not make a
		// round without any), or after 30s at the latest.
		var kill <-chan time.Time
		started := false
		deadline := time.After(30 * time.Second)
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break read
				}
				seqS, payload, _ := strings.Cut(l, " ")
				if seqS == "R" {
					r, _ := strconv.ParseUint(payload, 10, 64)
					released = max(released, r)
					continue
				}
				seq, _ := strconv.ParseUint(seqS, 10, 64)
				acked[seq] = payload
				if !started {
					started = true
					kill = time.After(time.Duration(rand.IntN(400)) * time.Millisecond)
				}
			case <-deadline:
				cmd.Process.Signal(syscall.SIGKILL)
				deadline = nil
			case <-kill:
				cmd.Process.Signal(syscall.SIGKILL)
				kill = nil
			}
		}
		cmd.Wait()
		if len(acked) == 0 {
			t.Fatalf("round %d: child acknowledged nothing", round)
		}
		checkCounters(t, path)

		b, err := Open(path, Options{})
		if err != nil {
			t.Fatalf("round %d: reopen after kill: %v", round, err)
		}
		got := readAll(t, b)
		seen := map[uint64]bool{}
		for i, r := range got {
			if i > 0 && r.Seq <= got[i-1].Seq {
				t.Fatalf("round %d: seq %d after %d", round, r.Seq, got[i-1].Seq)
			}
			if seen[r.Seq] {
				t.Fatalf("round %d: seq %d twice", round, r.Seq)
			}
			seen[r.Seq] = true
			if want, ok := acked[r.Seq]; ok && want != string(r.Payload) {
				t.Fatalf("round %d: seq %d holds %q, acknowledged %q", round, r.Seq, r.Payload, want)
			}
		}
		for seq := range acked {
			if !seen[seq] && seq > released { // a release may or may not have been committed
				t.Fatalf("round %d: acknowledged seq %d is missing (%d acked, %d present)", round, seq, len(acked), len(got))
			}
		}
		// A release that was committed carried the dead letter asked for
		// before it: the record 500 below it is in the dead-letter bucket.
		if st := b.Stats(); st.FirstSeq > 1000 || st.Records == 0 && st.LastSeq > 2000 {
			if st.DeadLettered["crash"] == 0 || st.DeadLetterRecords != st.DeadLettered["crash"] {
				t.Fatalf("round %d: releases committed up to %d but dead letters %+v", round, st.FirstSeq, st)
			}
		}
		t.Logf("round %d: %d acknowledged, released up to %d, %d present", round, len(acked), released, len(got))
		b.Close()
		checkConsistency(t, path)
	}
}

// Remove takes records out of the middle (delivered while an earlier one
// waits): they are not read again, after a reopen either, the counters
// follow, and a later Release of the prefix still works.
func TestRemoveOutOfOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b, 1, 10) // sequence numbers 1..10 in shared batches
	before := b.Stats()
	b.Remove(3, 5, 5, 10, 42) // a repeat and one that does not exist are ignored
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if st := b.Stats(); st.Records != 7 || st.Bytes >= before.Bytes {
		t.Fatalf("after removing 3 records: %d records, %d bytes (before %d, %d)", st.Records, st.Bytes, before.Records, before.Bytes)
	}
	recs, err := b.Read(context.Background(), 0, 100, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, r := range recs {
		seqs = append(seqs, r.Seq)
	}
	if fmt.Sprint(seqs) != "[1 2 4 6 7 8 9]" {
		t.Fatalf("read %v after removing 3, 5 and 10", seqs)
	}
	b.Release(9)
	if err := b.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.Records != 0 || st.Bytes != 0 {
		t.Fatalf("after releasing the rest: %+v", st)
	}
}

// SetLimits on a running buffer: a lowered MaxBytes drops the oldest
// records at the next commit (counted); a MaxAge set where there was none
// starts expiring records.
func TestSetLimitsWhileRunning(t *testing.T) {
	// Records received 200s, 190s, ... 10s ago: their age is real, not a
	// step of a test clock (which the buffer would not count as age).
	start := time.Now()
	b, err := Open(filepath.Join(t.TempDir(), "buffer.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	for i := range 20 {
		at := start.Add(-time.Duration(200-10*i) * time.Second)
		if _, err := b.AppendWait(ctx, &Record{Topic: "t", Payload: make([]byte, 100), ReceivedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	one := b.Stats().Bytes / 20
	b.SetLimits(Limits{MaxBytes: int64(10 * one)})
	if err := b.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.Records != 10 || st.Dropped[DropMaxBytes] != 10 || st.FirstSeq != 11 {
		t.Fatalf("after lowering max_bytes to 10 records: %+v", st)
	}
	b.SetLimits(Limits{MaxAge: 55 * time.Second}) // records 11..15 (100s to 60s old) are older
	waitUntil(t, "expired records to go", func() bool { return b.Stats().Dropped[DropMaxAge] == 5 })
	if st := b.Stats(); st.Records != 5 || st.FirstSeq != 16 {
		t.Fatalf("after setting max_age: %+v", st)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TryAppend takes a record where Append would not wait, and refuses it
// at once where Append would.
func TestTryAppend(t *testing.T) {
	b, err := Open(filepath.Join(t.TempDir(), "b.db"), Options{WriteDelay: time.Hour, QueueSize: 2, QueueBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var done atomic.Int32
	count := func(uint64, error) { done.Add(1) }
	// The first record is taken whatever its size.
	if ok, err := b.TryAppend(&Record{Topic: "a", Payload: make([]byte, 2<<20)}, count); !ok || err != nil {
		t.Fatalf("an empty tail: %v, %v", ok, err)
	}
	if ok, err := b.TryAppend(&Record{Topic: "a", Payload: []byte{1}}, count); ok || err != nil {
		t.Fatalf("a tail over QueueBytes: %v, %v", ok, err)
	}
	if st := b.Stats(); st.LastSeq != 1 {
		t.Fatalf("LastSeq %d after one record taken: a refused record took a number", st.LastSeq)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryAppend(&Record{Topic: "a"}, count); ok || !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, %v", ok, err)
	}
	if n := done.Load(); n != 1 {
		t.Fatalf("%d callbacks, want 1 (the record taken)", n)
	}
}
