package buffer

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// inspectRec is record i of the inspection tests, received i seconds after
// a fixed time.
func inspectRec(i int) *Record {
	return &Record{
		Topic:      fmt.Sprintf("sensors/dev-%02d/telemetry", i%7),
		Payload:    []byte(fmt.Sprintf(`{"i":%d,"pad":%q}`, i, strings.Repeat("x", i%50))),
		QoS:        byte(i % 3),
		ReceivedAt: time.Unix(1700000000+int64(i), 0),
	}
}

// fillBuffer creates a buffer at path holding records 1..n (several per
// batch), closes it and returns it.
func fillBuffer(t *testing.T, path string, n int) {
	t.Helper()
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b, 1, n)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

// appendN appends records from..to with one wait at the end, so they share
// commits and batches.
func appendN(t *testing.T, b *Buffer, from, to int) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := from; i <= to; i++ {
		wg.Add(1)
		if err := b.Append(inspectRec(i), func(_ uint64, err error) {
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
			}
			wg.Done()
		}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
}

func openReadOnlyTest(t *testing.T, path string) *ReadOnly {
	t.Helper()
	ro, err := OpenReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ro.Close() })
	return ro
}

func seqs(recs []Record) []uint64 {
	s := make([]uint64, len(recs))
	for i, r := range recs {
		s[i] = r.Seq
	}
	return s
}

func TestInspectOffline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b, 1, 300)
	b.Release(20)
	if err := b.flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	live := b.Stats()
	b.Close()
	t.Cleanup(func() { checkConsistency(t, path) })

	ro := openReadOnlyTest(t, path)
	info, err := ro.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Records != 280 || info.FirstSeq != 21 || info.LastSeq != 300 || info.Bytes != live.Bytes {
		t.Errorf("info %+v; live stats %+v", info, live)
	}
	if !info.Oldest.Equal(inspectRec(21).ReceivedAt) || !info.Newest.Equal(inspectRec(300).ReceivedAt) {
		t.Errorf("oldest %v newest %v", info.Oldest, info.Newest)
	}
	if info.FileSize <= 0 || info.PageSize <= 0 || info.UsedBytes <= 0 || info.UsedBytes > info.FileSize {
		t.Errorf("file usage %+v", info)
	}
	if _, ok := info.Dropped[DropPurged]; !ok {
		t.Errorf("dropped %v lacks %q", info.Dropped, DropPurged)
	}

	peek, err := ro.Peek(5)
	if err != nil {
		t.Fatal(err)
	}
	if got := seqs(peek); !reflect.DeepEqual(got, []uint64{21, 22, 23, 24, 25}) {
		t.Errorf("peek seqs %v", got)
	}
	if peek[0].Topic != inspectRec(21).Topic || !bytes.Equal(peek[0].Payload, inspectRec(21).Payload) {
		t.Errorf("peek[0] %+v", peek[0])
	}

	var all []Record
	skipped, err := ro.Each(func(r Record) error { all = append(all, r); return nil })
	if err != nil || skipped != 0 || len(all) != 280 {
		t.Fatalf("each: %d records, %d skipped, %v", len(all), skipped, err)
	}
	for i, r := range all {
		if r.Seq != uint64(21+i) {
			t.Fatalf("record %d has seq %d", i, r.Seq)
		}
	}
	stop := errors.New("enough")
	n := 0
	if _, err := ro.Each(func(Record) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Errorf("each did not stop at fn's error: %v after %d", err, n)
	}

	rep, err := ro.Verify(context.Background())
	if err != nil || !rep.OK() || !rep.StructureChecked || rep.Records != 280 {
		t.Errorf("verify: %+v, %v", rep, err)
	}
}

func TestOpenReadOnlyFailsWhileOpen(t *testing.T) {
	b, path := openTest(t)
	appendN(t, b, 1, 3)
	start := time.Now()
	if _, err := OpenReadOnly(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("OpenReadOnly of a buffer in use: %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v to fail", d)
	}
	if _, err := OpenReadOnly(filepath.Join(t.TempDir(), "missing.db")); err == nil {
		t.Error("OpenReadOnly of a missing file succeeded")
	}
}

// TestInspectLive reads a buffer that is being appended to and released.
func TestInspectLive(t *testing.T) {
	b, _ := openTest(t)
	appendN(t, b, 1, 50)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 51; ctx.Err() == nil; i += 20 {
			appendN(t, b, i, i+19)
			b.Release(uint64(i - 40))
		}
	}()
	defer func() { cancel(); wg.Wait() }()

	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		info, err := b.Info()
		if err != nil || info.Records == 0 || info.LastSeq < 50 {
			t.Fatalf("info %+v, %v", info, err)
		}
		peek, err := b.Peek(3)
		if err != nil || len(peek) != 3 || peek[1].Seq != peek[0].Seq+1 {
			t.Fatalf("peek %v, %v", seqs(peek), err)
		}
		var last uint64
		skipped, err := b.Each(func(r Record) error {
			if r.Seq <= last {
				return fmt.Errorf("seq %d after %d", r.Seq, last)
			}
			last = r.Seq
			return nil
		})
		if err != nil || skipped != 0 {
			t.Fatalf("each: %v, %d skipped", err, skipped)
		}
		rep, err := b.Verify(ctx)
		if err != nil || !rep.OK() || rep.StructureChecked {
			t.Fatalf("verify %+v, %v", rep, err)
		}
	}
}

func TestExportRoundTrip(t *testing.T) {
	b, _ := openTest(t)
	in := []*Record{
		inspectRec(1),
		{Topic: "bin", Payload: []byte{0xff, 0x00, 0xfe}, QoS: 2, Retain: true, ReceivedAt: time.Unix(1700000000, 123456789),
			ContentType: "application/octet-stream", ResponseTopic: "reply/<to>", CorrelationData: []byte{1, 2, 3},
			UserProperties: []Property{{"k", "v"}, {"k", "w & <x>"}}},
		{Topic: "empty", Payload: []byte{}, PayloadUTF8: true, ReceivedAt: time.Unix(1, 0)},
	}
	for _, r := range in {
		if _, err := b.AppendWait(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	if _, err := b.Each(func(r Record) error { return WriteJSON(&out, r) }); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != len(in) {
		t.Fatalf("%d lines:\n%s", len(lines), out.String())
	}
	if !strings.Contains(lines[1], `"payload_base64":"/wD+"`) || !strings.Contains(lines[1], `"user_properties":[["k","v"],["k","w & <x>"]]`) ||
		!strings.Contains(lines[1], `"received_at":"2023-11-14T22:13:20.123456789Z"`) || strings.Contains(lines[1], `"payload":`) {
		t.Errorf("binary record exported as %s", lines[1])
	}
	if !strings.Contains(lines[2], `"payload":""`) {
		t.Errorf("empty payload exported as %s", lines[2])
	}
	for i, line := range lines {
		var j JSONRecord
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&j); err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		got, err := j.Record()
		if err != nil {
			t.Fatal(err)
		}
		want := *in[i]
		want.Seq = uint64(i + 1)
		if !got.ReceivedAt.Equal(want.ReceivedAt) {
			t.Errorf("line %d: received_at %v, want %v", i, got.ReceivedAt, want.ReceivedAt)
		}
		got.ReceivedAt, want.ReceivedAt = time.Time{}, time.Time{}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("line %d round trip:\n got %+v\nwant %+v", i, got, want)
		}
	}
}

// corrupt changes the stored batch holding seq with damage, which gets the
// batch value and the index of seq's record in it.
func corrupt(t *testing.T, path string, seq uint64, damage func(v []byte, recs [][]byte, i int)) (base uint64, count int) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		batches := tx.Bucket(bucketBatches)
		k, v := seekBatch(batches.Cursor(), seq)
		base = binary.BigEndian.Uint64(k)
		v = append([]byte(nil), v...)
		recs, n, err := parseBatch(base, v)
		if err != nil || base > seq || seq >= base+uint64(n) {
			return fmt.Errorf("batch %d for seq %d: %d records, %v", base, seq, n, err)
		}
		count = n
		damage(v, recs, int(seq-base))
		return batches.Put(append([]byte(nil), k...), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	return base, count
}

func TestVerifyFindsDamageAndSalvageKeepsTheRest(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "buffer.db")
	fillBuffer(t, path, 400)

	// A flipped payload byte in record 30: its checksum and its batch's fail.
	flipBatch, _ := corrupt(t, path, 30, func(_ []byte, recs [][]byte, i int) { recs[i][len(recs[i])-6] ^= 0x40 })
	// A broken header in the batch holding record 200: none of it frames.
	brokenBatch, brokenCount := corrupt(t, path, 200, func(v []byte, _ [][]byte, _ int) { v[0] = 0 })
	if brokenBatch == flipBatch {
		t.Fatal("records 30 and 200 share a batch")
	}

	ro := openReadOnlyTest(t, path)
	rep, err := ro.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || len(rep.Problems) != 0 {
		t.Fatalf("verify found no damage, or structure problems: %+v", rep)
	}
	want := []Damage{
		{Batch: flipBatch},
		{Batch: flipBatch, Seq: 30, Records: 1},
		{Batch: brokenBatch, Seq: brokenBatch, Records: uint64(brokenCount)},
	}
	if len(rep.Damaged) != len(want) {
		t.Fatalf("damaged %+v, want %+v", rep.Damaged, want)
	}
	for i, d := range rep.Damaged {
		d.Err = ""
		if d != want[i] {
			t.Errorf("damage %d: %+v, want %+v", i, rep.Damaged[i], want[i])
		}
	}
	intact := 400 - 1 - uint64(brokenCount)
	if rep.Records != intact || rep.Unreadable() != 1+uint64(brokenCount) {
		t.Errorf("%d intact, %d unreadable; want %d and %d", rep.Records, rep.Unreadable(), intact, 1+brokenCount)
	}
	skipped, err := ro.Each(func(Record) error { return nil })
	if err != nil || skipped != 1+uint64(brokenCount) {
		t.Errorf("each skipped %d (%v), want %d", skipped, err, 1+brokenCount)
	}

	dst := filepath.Join(dir, "salvaged.db")
	n, err := ro.Salvage(dst)
	if err != nil || uint64(n) != intact {
		t.Fatalf("salvage copied %d, %v; want %d", n, err, intact)
	}
	if _, err := ro.Salvage(dst); err == nil {
		t.Error("salvage over an existing file succeeded")
	}
	checkConsistency(t, dst)

	sro := openReadOnlyTest(t, dst)
	srep, err := sro.Verify(context.Background())
	if err != nil || !srep.OK() || srep.Records != intact {
		t.Fatalf("verify of salvaged file: %+v, %v", srep, err)
	}
	sro.Close()

	b, err := Open(dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	st := b.Stats()
	if st.Records != intact || st.DeadLettered[ReasonUndecodable] != 1 || st.DeadLettered[ReasonBrokenBatch] != uint64(brokenCount) || st.ID == "" || st.LastSeq != 400 || st.FirstSeq != 1 {
		t.Errorf("salvaged stats %+v", st)
	}
	got := map[uint64]bool{}
	if _, err := b.Each(func(r Record) error {
		if !bytes.Equal(r.Payload, inspectRec(int(r.Seq)).Payload) {
			return fmt.Errorf("record %d payload %q", r.Seq, r.Payload)
		}
		got[r.Seq] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 400; seq++ {
		lost := seq == 30 || seq >= brokenBatch && seq < brokenBatch+uint64(brokenCount)
		if got[seq] == lost {
			t.Fatalf("record %d salvaged: %v", seq, got[seq])
		}
	}
	if seq, err := b.AppendWait(context.Background(), inspectRec(401)); err != nil || seq != 401 {
		t.Errorf("append after salvage: seq %d, %v; want 401", seq, err)
	}
}
