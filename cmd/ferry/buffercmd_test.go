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

func TestBufferUsageErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	for _, args := range [][]string{
		{"buffer"}, {"buffer", "fly"}, {"buffer", "stats", "extra", "--path", path},
		{"buffer", "stats", "-c", "x.yaml", "--path", path}, {"buffer", "purge", "--path", path},
		{"buffer", "peek", "-n", "-1", "--path", path}, {"buffer", "stats", "-c", filepath.Join(t.TempDir(), "missing.yaml")},
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
func serveLive(t *testing.T, path string) {
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
