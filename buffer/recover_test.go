package buffer

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// fill writes n records to a new buffer at path and closes it.
func fill(t *testing.T, path string, n int) {
	t.Helper()
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := b.AppendWait(context.Background(), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

// Recovery tests: write, damage the file, reopen, assert. A damaged file is
// never opened as if it were fine and never crashes the process; it is moved
// aside intact and a new buffer starts.
func TestRecoveryFromDamagedFiles(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"not a database", func(t *testing.T, path string) {
			os.WriteFile(path, []byte(strings.Repeat("this is not bbolt\n", 1000)), 0o600)
		}},
		{"tiny file", func(t *testing.T, path string) { os.WriteFile(path, []byte("x"), 0o600) }},
		{"both meta pages zeroed", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			f.WriteAt(make([]byte, 2*4096), 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "buffer.db")
			fill(t, path, 20)
			tc.damage(t, path)
			before, _ := os.ReadFile(path)

			if _, err := Open(path, Options{}); !errors.Is(err, ErrCorruptFile) {
				t.Fatalf("Open: %v, want ErrCorruptFile", err)
			}

			b, aside, err := OpenOrMoveAside(path, Options{})
			if err != nil {
				t.Fatalf("OpenOrMoveAside: %v", err)
			}
			defer b.Close()
			if aside == "" || !strings.HasPrefix(filepath.Base(aside), "buffer.db.corrupt-") {
				t.Fatalf("moved aside to %q", aside)
			}
			if got, _ := os.ReadFile(aside); string(got) != string(before) {
				t.Fatal("the damaged file was changed while moved aside")
			}
			if got := CorruptFiles(path); len(got) != 1 || got[0] != aside {
				t.Fatalf("CorruptFiles = %v", got)
			}
			// Salvage gets the records back where bbolt's structure is
			// still there to be scanned page by page.
			want := uint64(0)
			if tc.name == "both meta pages zeroed" {
				want = 20
			}
			if st := b.Stats(); st.Records != want || st.CorruptFiles != 1 {
				t.Fatalf("new buffer: %+v, want %d records salvaged and 1 corrupt file counted", st, want)
			}
			if info, err := b.Info(); err != nil || len(info.CorruptFiles) != 1 || info.CorruptFiles[0] != aside {
				t.Fatalf("info: %v, %v", info.CorruptFiles, err)
			}
			if _, err := b.AppendWait(context.Background(), rec(1)); err != nil {
				t.Fatalf("append to the new buffer: %v", err)
			}
		})
	}
}

func TestOneDamagedMetaPageKeepsRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	fill(t, path, 20)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("garbage!"), 4096+32)
	f.Close()
	b, aside, err := OpenOrMoveAside(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if aside != "" {
		t.Fatalf("a file bbolt can open was moved aside to %s", aside)
	}
	if got := readAll(t, b); len(got) < 19 { // the other meta page may be one commit older
		t.Fatalf("read %d records after one meta page was damaged, want at least 19", len(got))
	}
}

// TestMoveAsideTwiceInASecond: the second file moved aside does not
// replace the first. CorruptFiles lists them, in a directory whose name
// has a glob's metacharacters, and not an operator's copy beside them.
func TestMoveAsideTwiceInASecond(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gw[1]*")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "buffer.db")
	if err := os.WriteFile(path+".corrupt-20261125T101500Z.rescued.db", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var aside []string
	for range 3 {
		if err := os.WriteFile(path, []byte("garbage, not a database"), 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := MoveAside(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		aside = append(aside, a)
	}
	if got := CorruptFiles(path); !slices.Equal(got, aside) {
		t.Fatalf("moved aside: %q, want %q", got, aside)
	}
}

// TestCorruptFilesOrder: CorruptFiles lists the files one second moved
// aside in the order MoveAside named them, the tenth after the ninth.
func TestCorruptFilesOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	want := []string{path + ".corrupt-20261125T101459Z-12"}
	for _, n := range []string{"", "-2", "-3", "-9", "-10", "-11"} {
		want = append(want, path+".corrupt-20261125T101500Z"+n)
	}
	for _, p := range want {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if got := CorruptFiles(path); !slices.Equal(got, want) {
		t.Fatalf("CorruptFiles: %q, want %q", got, want)
	}
}

func TestDeletedFileStartsEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	fill(t, path, 5)
	os.Remove(path)
	b, aside, err := OpenOrMoveAside(path, Options{})
	if err != nil || aside != "" {
		t.Fatalf("OpenOrMoveAside: %v, aside %q", err, aside)
	}
	defer b.Close()
	if st := b.Stats(); st.Records != 0 || st.LastSeq != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLockedFileIsNotMovedAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, aside, err := OpenOrMoveAside(path, Options{LockTimeout: 50e6})
	if !errors.Is(err, ErrLocked) || aside != "" {
		t.Fatalf("err %v aside %q, want ErrLocked and nothing moved", err, aside)
	}
}

// A batch whose header is unreadable is dead-lettered whole, counted, when a
// release or a limit reaches it; never deleted uncounted.
func TestBrokenBatchHeaderIsDeadLetteredNotDropped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	fill(t, path, 3)                                     // three commits: batches at seq 1, 2 and 3
	damageBatch(t, path, 2, func(v []byte) { v[0] = 0 }) // not a batch any more

	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { b.Close(); checkConsistency(t, path) }()
	b.Release(3)
	if err := b.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.Records != 0 || st.DeadLettered[ReasonBrokenBatch] != 1 || st.DeadLetterRecords != 1 {
		t.Fatalf("stats %+v, want 0 records and the broken batch's record dead-lettered", st)
	}
	b.Close()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketDeadLetters).Get(seqKey(2)) == nil {
			t.Error("the broken batch is not in the dead-letter bucket")
		}
		return nil
	})
}

// A buffer opened while another process held the lock, and the file was
// replaced meanwhile (ferry buffer compact renames a new file over it),
// opens the new file, not the unlinked old one.
func TestOpenFollowsFileReplacedWhileLocked(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "buffer.db")
	fill(t, path, 1)
	fill(t, filepath.Join(dir, "new.db"), 5)

	holder, err := bolt.Open(path, 0o600, nil) // holds the lock on the old file
	if err != nil {
		t.Fatal(err)
	}
	opened := make(chan *Buffer, 1)
	go func() {
		b, err := Open(path, Options{LockTimeout: 10e9})
		if err != nil {
			t.Error(err)
		}
		opened <- b
	}()
	time.Sleep(100 * time.Millisecond) // Open is waiting for the lock
	if err := os.Rename(filepath.Join(dir, "new.db"), path); err != nil {
		t.Fatal(err)
	}
	holder.Close()
	b := <-opened
	if b == nil {
		return
	}
	defer b.Close()
	if st := b.Stats(); st.Records != 5 {
		t.Fatalf("opened a buffer with %d records, want the new file's 5", st.Records)
	}
}

// damageBatch rewrites the stored batch at key seq through damage, with the
// buffer closed.
func damageBatch(t *testing.T, path string, seq uint64, damage func(v []byte)) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketBatches)
		v := append([]byte(nil), bk.Get(seqKey(seq))...)
		damage(v)
		return bk.Put(seqKey(seq), v)
	}); err != nil {
		t.Fatal(err)
	}
}

// A batch's key is its only record of its sequence numbers: a key out of
// order in its leaf page, where its neighbours are in order, is taken for
// damaged and its batch left out of a page-by-page salvage (the chaos
// suite's bit flips once delivered 34 records out of order through one).
func TestFlippedKey(t *testing.T) {
	pb := func(keys ...uint64) []pageBatch {
		out := make([]pageBatch, len(keys))
		for i, k := range keys {
			out[i].base = k
		}
		return out
	}
	for _, tt := range []struct {
		keys []uint64
		want []bool
	}{
		{[]uint64{10, 20, 30}, []bool{false, false, false}},
		{[]uint64{10, 62, 30, 40}, []bool{false, true, false, false}}, // 26 with a bit flipped up
		{[]uint64{10, 20, 4, 40}, []bool{false, false, true, false}},  // 36 flipped down
		{[]uint64{50, 20, 30}, []bool{true, false, false}},            // the first
		{[]uint64{10, 20, 5}, []bool{false, false, true}},             // the last
		{[]uint64{20, 10}, []bool{true, true}},                        // two: no telling which
	} {
		cs := pb(tt.keys...)
		for i := range cs {
			if got := flippedKey(cs, i); got != tt.want[i] {
				t.Errorf("keys %v: flippedKey(%d) = %v, want %v", tt.keys, i, got, tt.want[i])
			}
		}
	}
}

// Of two overlapping batches in a page-by-page salvage, the one that
// tiles with its neighbours is kept: a layout a crashed commit left in
// freed pages (or a batch under a damaged key) is left out, the live one
// is not lost; when nothing tells, both are left out. A batch that holds
// its numbers (version 2) is kept over one that does not, and two that
// do are both kept (the salvage takes each number once).
func TestOverlappingBatchesTile(t *testing.T) {
	for _, tt := range []struct {
		name     string
		counts   map[uint64]int // key -> records
		want     []uint64       // keys kept
		verified []uint64       // keys whose batches hold their numbers (version 2)
	}{
		{"sound", map[uint64]int{100: 5, 105: 40, 145: 20}, []uint64{100, 105, 145}, nil},
		{"a stale layout after the live one", map[uint64]int{100: 5, 105: 40, 145: 20, 151: 30}, []uint64{100, 105, 145}, nil},
		{"a key flipped into its neighbour", map[uint64]int{100: 10, 114: 10, 120: 10, 130: 10}, []uint64{100, 120, 130}, nil},
		{"two alone", map[uint64]int{100: 10, 105: 10}, nil, nil},
		{"two alone, verified", map[uint64]int{100: 10, 105: 10}, []uint64{100, 105}, []uint64{100, 105}},
		{"a verified one over one that tiles", map[uint64]int{100: 10, 114: 10, 120: 10, 130: 10}, []uint64{100, 114, 130}, []uint64{114}},
	} {
		sc := &pageScan{batches: map[uint64]batchCopy{}}
		for k, n := range tt.counts {
			sc.batches[k] = batchCopy{count: n, verified: slices.Contains(tt.verified, k)}
		}
		f, err := os.Create(filepath.Join(t.TempDir(), "empty"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var got []uint64
		if err := sc.each(f, func(base uint64, _ []byte) error { got = append(got, base); return nil }); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: kept %v, want %v", tt.name, got, tt.want)
		}
	}
}

// Of the copies of one number a page-by-page salvage finds, it keeps one
// that holds its numbers (version 2) over one that does not, even after
// two that do not disagreed; of two that do, the longer (a commit retried
// after a failed one wrote the batch again with more records), else the
// one with fewer live records; of two that do not, the one that tiles
// with the batch before it in its page, else none.
func TestTakeCopies(t *testing.T) {
	type cp struct {
		count, live     int
		tiles, verified bool
	}
	for _, tt := range []struct {
		name   string
		copies []cp
		want   int // the copy kept, by index; -1: none
	}{
		{"verified over version 1", []cp{{5, 5, true, false}, {5, 3, false, true}}, 1},
		{"version 1 after verified", []cp{{5, 3, false, true}, {5, 2, true, false}}, 0},
		{"verified after a conflict", []cp{{5, 5, true, false}, {8, 8, true, false}, {5, 5, false, true}}, 2},
		{"verified: the longer", []cp{{8, 8, false, true}, {5, 2, true, true}}, 0},
		{"verified: the longer, found second", []cp{{5, 2, true, true}, {8, 8, false, true}}, 1},
		{"verified: fewer live", []cp{{5, 5, false, true}, {5, 3, false, true}}, 1},
		{"version 1: fewer live", []cp{{5, 5, true, false}, {5, 3, true, false}}, 1},
		{"version 1: the one that tiles", []cp{{5, 5, false, false}, {8, 8, true, false}}, 1},
		{"version 1: none tiles", []cp{{5, 5, false, false}, {8, 8, false, false}}, -1},
	} {
		sc := &pageScan{batches: map[uint64]batchCopy{}, conflict: map[uint64]bool{}}
		for i, c := range tt.copies {
			sc.take(pageBatch{base: 100, intact: true, batchCopy: batchCopy{off: int64(i), count: c.count, live: c.live, tiles: c.tiles, verified: c.verified}})
		}
		got, ok := sc.batches[100]
		switch {
		case tt.want < 0 && ok:
			t.Errorf("%s: kept copy %d, want none", tt.name, got.off)
		case tt.want >= 0 && (!ok || got.off != int64(tt.want)):
			t.Errorf("%s: kept copy %d (%v), want %d", tt.name, got.off, ok, tt.want)
		}
	}
}

// In a page-by-page salvage, a batch keyed at or beyond the file's next
// sequence number is left out when it is out of place (a high bit of its
// key flipped): keys of other pages lie between it and the batch before
// it in its page, nothing tells (first in its page), or it would take
// numbers a reservation may have given out. Batches that follow one
// another in their page are kept (a next read from an older copy of the
// meta bucket).
func TestDropBeyond(t *testing.T) {
	type b struct{ key, pred uint64 }
	for _, tt := range []struct {
		name           string
		batches        []b
		next, reserved uint64
		want           []uint64 // keys kept
		verified       bool     // the batches' numbers are known
	}{
		{"sound", []b{{1, 0}, {11, 1}, {21, 11}}, 31, 31, []uint64{1, 11, 21}, false},
		{"a leaf's last key flipped", []b{{1, 0}, {1 << 29, 1}, {21, 0}, {31, 21}}, 41, 41, []uint64{1, 21, 31}, false},
		{"the file's last key flipped", []b{{1, 0}, {11, 1}, {1 << 29, 11}}, 31, 31, []uint64{1, 11, 1 << 29}, false},
		{"the file's last key flipped into a reservation", []b{{1, 0}, {11, 1}, {1000, 11}}, 31, 1 << 22, []uint64{1, 11}, false},
		{"the last key flipped, alone in its page", []b{{1, 0}, {11, 1}, {1 << 29, 0}}, 31, 31, []uint64{1, 11}, false},
		{"a next out of date", []b{{1, 0}, {11, 1}, {21, 11}, {31, 21}}, 21, 21, []uint64{1, 11, 21, 31}, false},
		{"a next out of date, a page begun since", []b{{1, 0}, {11, 1}, {21, 0}, {31, 21}}, 21, 21, []uint64{1, 11, 31}, false},
		{"a next out of date with a write delay, batches that tile", []b{{1, 0}, {11, 1}, {21, 11}, {31, 21}}, 21, 1 << 22, []uint64{1, 11, 21, 31}, false},
		{"a next out of date with a write delay, a gap", []b{{1, 0}, {11, 1}, {25, 11}}, 21, 1 << 22, []uint64{1, 11}, false},
		{"next not known", []b{{1, 0}, {1 << 29, 1}}, 0, 0, []uint64{1, 1 << 29}, false},
		{"the batch before it in its page not kept", []b{{40, 30}, {50, 40}}, 31, 31, []uint64{50}, false},
		{"the first batch kept beyond next, the one before it in its page not", []b{{40, 30}}, 31, 31, nil, false},
		{"verified batches (version 2) beyond next, alone in their pages", []b{{1, 0}, {11, 1}, {25, 0}, {35, 0}}, 21, 1 << 22, []uint64{1, 11, 25, 35}, true},
	} {
		sc := &pageScan{batches: map[uint64]batchCopy{}}
		for _, x := range tt.batches {
			sc.batches[x.key] = batchCopy{count: 10, pred: x.pred, verified: tt.verified}
		}
		sc.dropBeyond(tt.next, tt.reserved)
		got := slices.Sorted(maps.Keys(sc.batches))
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: kept %v, want %v", tt.name, got, tt.want)
		}
		if len(tt.want) == 0 {
			if sc.end != 0 {
				t.Errorf("%s: end %d with no batch", tt.name, sc.end)
			}
			continue
		}
		if want := tt.want[len(tt.want)-1] + 10; sc.end != want && tt.next > 1 {
			t.Errorf("%s: end %d, want %d", tt.name, sc.end, want)
		}
	}
}

// reopen opens the buffer at path with OpenOrMoveAside, marking it
// damaged first if damaged, and checks that it moved the file aside
// exactly then; it returns where to.
func reopen(t *testing.T, path string, opts Options, damaged bool) (*Buffer, string) {
	t.Helper()
	if damaged {
		if err := writeDamageMark(path, errors.New("test damage")); err != nil {
			t.Fatal(err)
		}
	}
	b, aside, err := OpenOrMoveAside(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	if damaged != (aside != "") {
		t.Fatalf("damaged %v, moved aside to %q", damaged, aside)
	}
	return b, aside
}

// moveAside marks the buffer at path damaged, lets OpenOrMoveAside move
// it aside and closes the buffer that replaced it; it returns where the
// file went.
func moveAside(t *testing.T, path string, opts Options) string {
	t.Helper()
	b, aside := reopen(t, path, opts, true)
	closeBuffer(t, b)
	return aside
}

func closeBuffer(t *testing.T, b *Buffer) {
	t.Helper()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

// releaseAll releases every record b holds.
func releaseAll(t *testing.T, b *Buffer) {
	t.Helper()
	if recs := readAll(t, b); len(recs) > 0 {
		b.Release(recs[len(recs)-1].Seq)
	}
}

// sameFiles reports whether got and want name the same files.
func sameFiles(got, want []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want)))
}

// A damaged file whose salvage copied everything it held is named
// .salvaged-<lineage>-<next> and removed at a start that opens the buffer
// as it is, once the buffer has released every record below next; the
// latest such file stays, and so does a file salvaged page by page, and
// the files of a lineage the buffer no longer has.
func TestCompleteSalvagesArePrunedOnceReleased(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	fill(t, path, 5)
	b, first := reopen(t, path, Options{}, true)
	if !strings.Contains(filepath.Base(first), ".salvaged-") {
		t.Fatalf("a complete salvage moved the file to %s", first)
	}
	if n := len(readAll(t, b)); n != 5 {
		t.Fatalf("salvaged %d records, want 5", n)
	}
	closeBuffer(t, b)
	second := moveAside(t, path, Options{})
	b, _ = reopen(t, path, Options{}, false)
	if got := CorruptFiles(path); !slices.Equal(got, []string{first, second}) {
		t.Fatalf("before the records were released, moved aside: %q", got)
	}
	releaseAll(t, b)
	appendN(t, b, 10, 12)
	closeBuffer(t, b)
	b, third := reopen(t, path, Options{}, true)
	if got := CorruptFiles(path); !slices.Equal(got, []string{first, second, third}) {
		t.Fatalf("a start that moves a file aside removed some: %q", got)
	}
	closeBuffer(t, b)
	b, _ = reopen(t, path, Options{}, false)
	if got := CorruptFiles(path); !slices.Equal(got, []string{third}) {
		t.Fatalf("after the records were released, moved aside: %q, want only the latest %q", got, third)
	}
	if n := len(readAll(t, b)); n != 3 {
		t.Fatalf("the buffer holds %d records, want 3", n)
	}
	if st := b.Stats(); st.CorruptFiles != 1 {
		t.Fatalf("stats count %d moved-aside files, want 1", st.CorruptFiles)
	}
	closeBuffer(t, b)

	// A salvage by hand, page by page (both meta pages lost), put in
	// place as docs/BUFFER.md says: it may have left records of the
	// older files behind, so it starts another lineage, and they stay
	// once its records are released.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 2*4096), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	byHand := filepath.Join(filepath.Dir(path), "rescued.db")
	if _, err := SalvageFile(path, byHand); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path, filepath.Join(filepath.Dir(path), "damaged.db")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(byHand, path); err != nil {
		t.Fatal(err)
	}
	b, _ = reopen(t, path, Options{}, false)
	releaseAll(t, b)
	appendN(t, b, 0, 19)
	releaseAll(t, b)
	closeBuffer(t, b)
	fourth := moveAside(t, path, Options{})
	fifth := moveAside(t, path, Options{})
	b, _ = reopen(t, path, Options{}, false)
	// third stays: the lineage it belongs to ended with the salvage by
	// hand. In the new one, fourth goes and fifth, the latest, stays.
	if got, want := CorruptFiles(path), []string{third, fifth}; !sameFiles(got, want) {
		t.Fatalf("after a salvage by hand, moved aside: %q, want %q (%q removed)", got, want, fourth)
	}
	closeBuffer(t, b)

	// Garbage: salvaged page by page (nothing), never removed; the new
	// buffer starts another lineage, whose numbers pass the older files'
	// next without having delivered their records: they stay, and its
	// own complete files are pruned as before.
	if err := os.WriteFile(path, []byte("garbage, not a database"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, garbage := reopen(t, path, Options{}, true)
	if strings.Contains(filepath.Base(garbage), ".salvaged-") {
		t.Fatalf("a page-by-page salvage moved the file to %s", garbage)
	}
	appendN(t, b, 0, 29)
	releaseAll(t, b)
	closeBuffer(t, b)
	sixth := moveAside(t, path, Options{})
	seventh := moveAside(t, path, Options{})
	b, _ = reopen(t, path, Options{}, false)
	defer b.Close()
	if got, want := CorruptFiles(path), []string{third, fifth, garbage, seventh}; !sameFiles(got, want) {
		t.Fatalf("moved aside: %q, want %q (%q removed)", got, want, sixth)
	}
}

// A salvage carries the wall clock's steps over with the other counters:
// without them, records received before an NTP step look that much older
// to max_age in the new buffer and are dropped.
func TestSalvageKeepsClockSteps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	fill(t, path, 5)
	steps := []clockStep{{at: time.Unix(1_800_000_000, 0), delta: 7 * 24 * time.Hour}}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyClockSteps, encodeSteps(steps)) })
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := writeDamageMark(path, errors.New("test damage")); err != nil {
		t.Fatal(err)
	}
	b, aside, err := OpenOrMoveAside(path, Options{})
	if err != nil || aside == "" {
		t.Fatalf("OpenOrMoveAside: %v, moved aside to %q", err, aside)
	}
	defer b.Close()
	b.mu.Lock()
	got := b.st.steps
	b.mu.Unlock()
	if len(got) != 1 || !got[0].at.Equal(steps[0].at) || got[0].delta != steps[0].delta {
		t.Fatalf("clock steps after the salvage: %+v, want %+v", got, steps)
	}

	// Page by page too (both meta pages lost): the steps come from the
	// meta bucket's leaf.
	path2 := filepath.Join(filepath.Dir(path), "again.db")
	if err := os.Rename(aside, path2); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path2, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 2*4096), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dst := filepath.Join(filepath.Dir(path), "rescued.db")
	if _, err := SalvageFile(path2, dst); err != nil {
		t.Fatal(err)
	}
	b2, err := Open(dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	b2.mu.Lock()
	got = b2.st.steps
	b2.mu.Unlock()
	if len(got) != 1 || !got[0].at.Equal(steps[0].at) || got[0].delta != steps[0].delta {
		t.Fatalf("clock steps after a page-by-page salvage: %+v, want %+v", got, steps)
	}
}

// An older copy of the buffer put back (a backup) is not a descendant of
// the files moved aside after it was taken, which hold records it lacks:
// Open gives it another lineage, and they are never pruned.
func TestRestoredCopyStartsALineage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	fill(t, path, 5)
	backup, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := reopen(t, path, Options{}, false)
	appendN(t, b, 5, 9)
	closeBuffer(t, b)
	aside := []string{moveAside(t, path, Options{}), moveAside(t, path, Options{})}
	if err := os.WriteFile(path, backup, 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ = reopen(t, path, Options{}, false)
	appendN(t, b, 100, 119)
	releaseAll(t, b)
	closeBuffer(t, b)
	aside = append(aside, moveAside(t, path, Options{}), moveAside(t, path, Options{}))
	b, _ = reopen(t, path, Options{}, false)
	defer b.Close()
	got := CorruptFiles(path)
	for _, a := range aside[:2] {
		if !slices.Contains(got, a) {
			t.Fatalf("%s, moved aside before the backup was put back, was removed: %q", a, got)
		}
	}
	if slices.Contains(got, aside[2]) || !slices.Contains(got, aside[3]) {
		t.Fatalf("the restored buffer's own files: %q, want %s removed and %s kept", got, aside[2], aside[3])
	}
}

// The same with a write delay, and the backup put back where a damage mark
// is left (or the backup is damaged itself): Open refuses it, so the
// salvage decides. Its counters' next is below the file moved aside
// after it was taken, although the salvage raises the new buffer's next
// to the reservation they share: the salvage starts another lineage.
func TestRestoredDamagedCopyStartsALineage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	opts := Options{WriteDelay: time.Millisecond}
	b, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b, 0, 4)
	backup, err := os.ReadFile(path) // a copy taken while ferry runs: the same reservation
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b, 5, 9)
	closeBuffer(t, b)
	first := moveAside(t, path, opts)
	if err := os.WriteFile(path, backup, 0o600); err != nil {
		t.Fatal(err)
	}
	moveAside(t, path, opts) // the backup, refused for the mark
	b, _ = reopen(t, path, opts, false)
	appendN(t, b, 100, 119)
	releaseAll(t, b)
	closeBuffer(t, b)
	moveAside(t, path, opts)
	b, _ = reopen(t, path, opts, false)
	defer b.Close()
	if got := CorruptFiles(path); !slices.Contains(got, first) {
		t.Fatalf("%s, moved aside before the backup was put back, was removed: %q", first, got)
	}
}
