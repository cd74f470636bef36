package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/admin"
	"github.com/ferry-edge/ferry/internal/testenv"
)

// ferryCmd runs the ferry command with args and returns its exit code and
// output.
func ferryCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func mustCmd(t *testing.T, want int, args ...string) string {
	t.Helper()
	code, out, errOut := ferryCmd(t, args...)
	if code != want {
		t.Fatalf("ferry %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, out, errOut)
	}
	return out + errOut
}

func testRecord(i int, at time.Time) *buffer.Record {
	return &buffer.Record{
		Topic:          fmt.Sprintf("sensors/dev-%d/telemetry", i%5),
		Payload:        []byte(fmt.Sprintf(`{"i":%d}`, i)),
		QoS:            1,
		ReceivedAt:     at,
		UserProperties: []buffer.Property{{Key: "n", Value: fmt.Sprint(i)}},
	}
}

// writeRecords appends n records to b: the first old ones received 100h
// ago, the rest now.
func writeRecords(t *testing.T, b *buffer.Buffer, from, n, old int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		at := time.Now()
		if i < from+old {
			at = at.Add(-100 * time.Hour)
		}
		if _, err := b.AppendWait(context.Background(), testRecord(i, at)); err != nil {
			t.Fatal(err)
		}
	}
}

func readJSONLines(t *testing.T, text string) []buffer.Record {
	t.Helper()
	var recs []buffer.Record
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		var j buffer.JSONRecord
		if err := json.Unmarshal(sc.Bytes(), &j); err != nil {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		r, err := j.Record()
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	return recs
}

func TestBufferCommandsOffline(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "buffer.db")
	b, err := buffer.Open(path, buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	writeRecords(t, b, 1, 50, 20)
	b.Close()
	// A damaged file ferry moved aside earlier is shown.
	if err := os.WriteFile(path+".corrupt-20261101T000000Z", []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}

	// -c finds the buffer through the configuration.
	cfg := filepath.Join(dir, "ferry.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`gateway_id: gw
mqtt:
  url: tcp://127.0.0.1:1883
  subscriptions:
    - filter: sensors/+/telemetry
      qos: 1
buffer:
  path: %q
forward:
  kafka:
    brokers: ["127.0.0.1:9092"]
  routes:
    - match: sensors/{device}/telemetry
      topic: telemetry
`, path)), 0o600); err != nil {
		t.Fatal(err)
	}
	out := mustCmd(t, exitOK, "buffer", "stats", "-c", cfg)
	for _, want := range []string{"file at rest", "records      50", "seq 1 to 50", "oldest", "in use (what max_bytes bounds)", "retired", "reclaimable", "free pages", "purged 0", "moved aside  " + path + ".corrupt-20261101T000000Z"} {
		if !strings.Contains(out, want) {
			t.Errorf("stats lacks %q:\n%s", want, out)
		}
	}
	var info buffer.Info
	if err := json.Unmarshal([]byte(mustCmd(t, exitOK, "buffer", "stats", "--json", "--path", path)), &info); err != nil || info.Records != 50 {
		t.Errorf("stats --json: %+v, %v", info, err)
	}

	out = mustCmd(t, exitOK, "buffer", "peek", "-n", "2", "--path", path)
	if !strings.Contains(out, "1  ") || !strings.Contains(out, `"{\"i\":2}"`) || strings.Contains(out, `"i\":3`) || !strings.Contains(out, "n=1") {
		t.Errorf("peek -n 2:\n%s", out)
	}
	if recs := readJSONLines(t, mustCmd(t, exitOK, "buffer", "peek", "--json", "-n", "3", "--path", path)); len(recs) != 3 || recs[2].Seq != 3 {
		t.Errorf("peek --json: %+v", recs)
	}

	exported := filepath.Join(dir, "export.jsonl")
	out = mustCmd(t, exitOK, "buffer", "export", "-o", exported, "--path", path)
	if !strings.Contains(out, "exported 50 records") {
		t.Errorf("export said %q", out)
	}
	data, err := os.ReadFile(exported)
	if err != nil {
		t.Fatal(err)
	}
	recs := readJSONLines(t, string(data))
	if len(recs) != 50 || recs[49].Seq != 50 || string(recs[49].Payload) != `{"i":50}` || recs[0].UserProperties[0].Value != "1" {
		t.Fatalf("exported %d records: %+v", len(recs), recs)
	}
	mustCmd(t, exitFailure, "buffer", "export", "-o", exported, "--path", path) // no overwrite

	if out := mustCmd(t, exitOK, "buffer", "verify", "--path", path); !strings.Contains(out, "bbolt structure checked") || !strings.Contains(out, "; ok") {
		t.Errorf("verify:\n%s", out)
	}
	if out := mustCmd(t, exitOK, "buffer", "purge", "--older-than", "72h", "--path", path); !strings.Contains(out, "purged 20 records") {
		t.Errorf("purge:\n%s", out)
	}
	if out := mustCmd(t, exitOK, "buffer", "stats", "--path", path); !strings.Contains(out, "seq 21 to 50") || !strings.Contains(out, "purged 20") {
		t.Errorf("stats after purge:\n%s", out)
	}
	if out := mustCmd(t, exitOK, "buffer", "compact", "--path", path); !strings.Contains(out, "compacted") {
		t.Errorf("compact:\n%s", out)
	}

	// Damage: verify fails, salvage keeps the rest.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket([]byte("batches"))
		k, v := bk.Cursor().Last()
		v = append([]byte(nil), v...)
		v[len(v)-7] ^= 0x20 // in the last record's payload
		return bk.Put(append([]byte(nil), k...), v)
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if out := mustCmd(t, exitFailure, "buffer", "verify", "--path", path); !strings.Contains(out, "damaged record 50") || !strings.Contains(out, "DAMAGED") {
		t.Errorf("verify of a damaged buffer:\n%s", out)
	}
	salvaged := filepath.Join(dir, "salvaged.db")
	if out := mustCmd(t, exitOK, "buffer", "verify", "--path", path, "--salvage", salvaged); !strings.Contains(out, "salvaged 29 records") {
		t.Errorf("salvage:\n%s", out)
	}
	if out := mustCmd(t, exitOK, "buffer", "verify", "--path", salvaged); !strings.Contains(out, "29 intact records") {
		t.Errorf("verify of the salvaged file:\n%s", out)
	}
	mustCmd(t, exitFailure, "buffer", "export", "--path", path) // a record is missing from the export
}

// TestBufferVerifyReportsTheDamageMark: damage ferry met while running
// marks the file (see buffer.DamageMark), and ferry refuses it. verify
// says so even when the file itself checks out, and the salvage's
// instructions remove the mark with the file they replace.
func TestBufferVerifyReportsTheDamageMark(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "buffer.db")
	b, err := buffer.Open(path, buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	writeRecords(t, b, 1, 10, 20)
	b.Close()
	mark := buffer.DamageMark(path)
	if err := os.WriteFile(mark, []byte("buffer file is corrupt: a page read as garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := mustCmd(t, exitFailure, "buffer", "verify", "--path", path); !strings.Contains(out, "a page read as garbage") || !strings.Contains(out, mark) || !strings.Contains(out, "DAMAGED") {
		t.Errorf("verify of a marked buffer:\n%s", out)
	}
	salvaged := filepath.Join(dir, "salvaged.db")
	out := mustCmd(t, exitOK, "buffer", "verify", "--path", path, "--salvage", salvaged)
	if want := "mv " + salvaged + " " + path + " && rm " + mark; !strings.Contains(out, want) || !strings.Contains(out, "salvaged 10 records") {
		t.Errorf("salvage of a marked buffer lacks %q:\n%s", want, out)
	}
	if err := os.Rename(salvaged, path); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(mark); err != nil {
		t.Fatal(err)
	}
	mustCmd(t, exitOK, "buffer", "verify", "--path", path)
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/var/lib/ferry/buffer.db": "/var/lib/ferry/buffer.db",
		"/data/my buffer.db":       "'/data/my buffer.db'",
		"/data/it's.db":            `'/data/it'\''s.db'`,
		"":                         "''",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestBufferUsageErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	for _, args := range [][]string{
		{"buffer"}, {"buffer", "fly"}, {"buffer", "stats", "extra", "--path", path},
		{"buffer", "stats", "-c", "x.yaml", "--path", path}, {"buffer", "purge", "--path", path},
		{"buffer", "peek", "-n", "-1", "--path", path}, {"buffer", "stats", "-c", filepath.Join(t.TempDir(), "missing.yaml")},
		{"buffer", "dlq"}, {"buffer", "dlq", "fly"}, {"buffer", "dlq", "purge", "--path", path},
		{"buffer", "dlq", "replay", "--all", "--reason", "x", "--path", path}, {"buffer", "dlq", "list", "--limit", "-1", "--path", path},
	} {
		if code, _, _ := ferryCmd(t, args...); code != exitUsage {
			t.Errorf("ferry %v: exit %d, want %d", args, code, exitUsage)
		}
	}
	if code, _, errOut := ferryCmd(t, "buffer", "stats", "--path", path); code != exitFailure || !strings.Contains(errOut, "no such file") {
		t.Errorf("stats of a missing buffer: exit %d, %s", code, errOut)
	}
}

// serveLive opens a buffer at path, serves it on its admin socket and keeps
// appending to it until the test ends.
func serveLive(t *testing.T, path string) *buffer.Buffer {
	t.Helper()
	b, err := buffer.Open(path, buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	writeRecords(t, b, 1, 30, 10)
	srv, err := admin.Listen(admin.SocketPath(path), b, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	go func() {
		defer wg.Done()
		for i := 31; ctx.Err() == nil; i++ {
			if _, err := b.AppendWait(ctx, testRecord(i, time.Now())); err != nil && ctx.Err() == nil {
				t.Errorf("append: %v", err)
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		b.Close()
	})
	return b
}

func TestBufferCommandsLive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	serveLive(t, path)

	if out := mustCmd(t, exitOK, "buffer", "stats", "--path", path); !strings.Contains(out, "live, through ferry's admin socket") || !strings.Contains(out, "seq 1 to ") {
		t.Errorf("stats:\n%s", out)
	}
	if out := mustCmd(t, exitOK, "buffer", "peek", "-n", "1", "--path", path); !strings.HasPrefix(out, "1  ") {
		t.Errorf("peek:\n%s", out)
	}
	out := mustCmd(t, exitOK, "buffer", "export", "--path", path)
	recs := readJSONLines(t, out[:strings.LastIndex(out, "exported")])
	if len(recs) < 30 {
		t.Fatalf("export of a live buffer: %d records", len(recs))
	}
	for i, r := range recs {
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d has seq %d", i, r.Seq)
		}
	}
	if out := mustCmd(t, exitOK, "buffer", "verify", "--path", path); !strings.Contains(out, "not checked (ferry is running") {
		t.Errorf("verify:\n%s", out)
	}
	for _, args := range [][]string{
		{"purge", "--older-than", "1h"}, {"compact"}, {"verify", "--salvage", path + ".new"},
	} {
		args = append(append([]string{"buffer"}, args...), "--path", path)
		if out := mustCmd(t, exitFailure, args...); !strings.Contains(out, errFerryRunning) {
			t.Errorf("ferry %v while live:\n%s", args, out)
		}
	}
}

// TestRunServesAdminSocket runs ferry and inspects its buffer while it runs
// and after it stopped.
func TestRunServesAdminSocket(t *testing.T) {
	broker := testenv.NewBroker(t)
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	dir := t.TempDir()
	bufPath := filepath.Join(dir, "buffer.db")
	configPath := filepath.Join(dir, "ferry.yaml")
	if err := os.WriteFile(configPath, []byte(testenv.FerryConfig(broker, kafka, topic, bufPath)), 0o600); err != nil {
		t.Fatal(err)
	}
	ferry := startFerry(t, configPath)
	ferry.waitSubscribed(t)

	fi, err := os.Stat(admin.SocketPath(bufPath))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("admin socket: %v, %v", fi, err)
	}
	if out := mustCmd(t, exitOK, "buffer", "stats", "-c", configPath); !strings.Contains(out, "live") {
		t.Errorf("stats of a running ferry:\n%s", out)
	}
	if out := mustCmd(t, exitFailure, "buffer", "compact", "-c", configPath); !strings.Contains(out, errFerryRunning) {
		t.Errorf("compact of a running ferry:\n%s", out)
	}
	if code := ferry.stop(t, syscall.SIGTERM); code != exitOK {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	if _, err := os.Stat(admin.SocketPath(bufPath)); !os.IsNotExist(err) {
		t.Errorf("socket left after stop: %v", err)
	}
	if out := mustCmd(t, exitOK, "buffer", "stats", "-c", configPath); !strings.Contains(out, "file at rest") {
		t.Errorf("stats after stop:\n%s", out)
	}
}

// deadLetterAndWait dead-letters seqs in b and waits until they are in the
// dead-letter bucket.
func deadLetterAndWait(t *testing.T, b *buffer.Buffer, reason buffer.Reason, seqs ...uint64) {
	t.Helper()
	want := b.Stats().DeadLetterRecords + uint64(len(seqs))
	for _, seq := range seqs {
		b.DeadLetter(seq, reason, fmt.Errorf("kafka: %s for record %d", reason, seq))
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.Stats().DeadLetterRecords < want {
		if time.Now().After(deadline) {
			t.Fatalf("dead letters not written: %+v", b.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readDeadLetterLines(t *testing.T, text string) []buffer.DeadLetterEntry {
	t.Helper()
	var got []buffer.DeadLetterEntry
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		var j buffer.JSONDeadLetter
		if err := json.Unmarshal(sc.Bytes(), &j); err != nil {
			t.Fatalf("dead-letter line %q: %v", sc.Text(), err)
		}
		e, err := j.Entry()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	return got
}

func TestBufferDLQOffline(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "buffer.db")
	b, err := buffer.Open(path, buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	writeRecords(t, b, 1, 10, 0)
	deadLetterAndWait(t, b, "message_too_large", 3, 7)
	deadLetterAndWait(t, b, "invalid_topic", 5)
	b.Release(10)
	b.Close()

	out := mustCmd(t, exitOK, "buffer", "dlq", "list", "--path", path)
	for _, want := range []string{"SEQ", "REASON", "DETAIL", "message_too_large", "invalid_topic", "sensors/dev-3/telemetry", "kafka: invalid_topic for record 5"} {
		if !strings.Contains(out, want) {
			t.Errorf("dlq list lacks %q:\n%s", want, out)
		}
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 4 || !strings.HasPrefix(lines[1], "3 ") || !strings.HasPrefix(lines[3], "7 ") {
		t.Errorf("dlq list: want a header and seqs 3, 5, 7:\n%s", out)
	}
	if out := mustCmd(t, exitOK, "buffer", "dlq", "list", "--limit", "1", "--path", path); strings.Count(out, "\n") != 2 || !strings.Contains(out, "\n3 ") {
		t.Errorf("dlq list --limit 1:\n%s", out)
	}
	got := readDeadLetterLines(t, mustCmd(t, exitOK, "buffer", "dlq", "list", "--reason", "invalid_topic", "--json", "--path", path))
	if len(got) != 1 || got[0].Seq != 5 || got[0].Reason != "invalid_topic" || got[0].Record == nil || string(got[0].Record.Payload) != `{"i":5}` {
		t.Fatalf("dlq list --json: %+v", got)
	}

	file := filepath.Join(dir, "dead.jsonl")
	if out := mustCmd(t, exitOK, "buffer", "dlq", "export", "-o", file, "--path", path); !strings.Contains(out, "exported 3 dead letters") {
		t.Errorf("dlq export:\n%s", out)
	}
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	got = readDeadLetterLines(t, string(text))
	if len(got) != 3 || got[2].Seq != 7 || got[2].Detail != "kafka: message_too_large for record 7" || got[2].DeadLetteredAt.IsZero() ||
		got[2].Record.Topic != "sensors/dev-2/telemetry" || got[2].Record.UserProperties[0].Value != "7" {
		t.Fatalf("dlq export: %+v", got)
	}
	for _, field := range []string{`"reason":`, `"detail":`, `"dead_lettered_at":`, `"received_at":`, `"payload":`} {
		if !strings.Contains(string(text), field) {
			t.Errorf("dlq export lacks %s:\n%s", field, text)
		}
	}

	if out := mustCmd(t, exitOK, "buffer", "dlq", "replay", "--reason", "message_too_large", "--path", path); !strings.Contains(out, "replayed 2 dead letters") || !strings.Contains(out, "as records 11 to 12") {
		t.Errorf("dlq replay:\n%s", out)
	}
	peeked := readJSONLines(t, mustCmd(t, exitOK, "buffer", "peek", "--json", "--path", path))
	if len(peeked) != 2 || peeked[0].Seq != 11 || string(peeked[0].Payload) != `{"i":3}` || peeked[1].Seq != 12 {
		t.Fatalf("after replay, peek: %+v", peeked)
	}
	if out := mustCmd(t, exitOK, "buffer", "dlq", "purge", "--all", "--path", path); !strings.Contains(out, "purged 1 dead-letter records") {
		t.Errorf("dlq purge:\n%s", out)
	}
	out = mustCmd(t, exitOK, "buffer", "stats", "--path", path)
	for _, want := range []string{"dead letters 0 records held", "invalid_topic 1, message_too_large 2", "dead_letter_purged 1", "log id"} {
		if !strings.Contains(out, want) {
			t.Errorf("stats lacks %q:\n%s", want, out)
		}
	}
	if out := mustCmd(t, exitOK, "buffer", "dlq", "list", "--path", path); !strings.Contains(out, "no dead letters") {
		t.Errorf("dlq list of an empty bucket:\n%s", out)
	}
}

func TestBufferDLQLive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	b := serveLive(t, path)
	deadLetterAndWait(t, b, "invalid_topic", 2, 4)

	out := mustCmd(t, exitOK, "buffer", "dlq", "list", "--path", path)
	if !strings.Contains(out, "\n2 ") || !strings.Contains(out, "\n4 ") || !strings.Contains(out, "invalid_topic") {
		t.Errorf("dlq list, live:\n%s", out)
	}
	if got := readDeadLetterLines(t, mustCmd(t, exitOK, "buffer", "dlq", "list", "--seq", "4", "--json", "--path", path)); len(got) != 1 || got[0].Seq != 4 {
		t.Errorf("dlq list --seq 4, live: %+v", got)
	}
	out = mustCmd(t, exitOK, "buffer", "dlq", "replay", "--seq", "2", "--path", path)
	if !strings.Contains(out, "replayed 1 dead letters") || !strings.Contains(out, "live, through ferry's admin socket") {
		t.Errorf("dlq replay, live:\n%s", out)
	}
	if st := b.Stats(); st.DeadLetterRecords != 1 || st.DeadLettered["invalid_topic"] != 2 {
		t.Errorf("after a live replay: %+v", st)
	}
	if out := mustCmd(t, exitOK, "buffer", "dlq", "purge", "--reason", "invalid_topic", "--path", path); !strings.Contains(out, "purged 1 dead-letter records") {
		t.Errorf("dlq purge, live:\n%s", out)
	}
	if st := b.Stats(); st.DeadLetterRecords != 0 || st.Dropped[buffer.DropDeadLetterPurged] != 1 {
		t.Errorf("after a live purge: %+v", st)
	}
}
