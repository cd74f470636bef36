package admin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ferry-edge/ferry/buffer"
)

func TestServeLiveBuffer(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	b, err := buffer.Open(filepath.Join(dir, "b.db"), buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sock := SocketPath(b.Path())
	srv, err := Listen(sock, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v", fi, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // appends all along
		defer wg.Done()
		for i := 1; ctx.Err() == nil; i++ {
			r := &buffer.Record{Topic: "t", Payload: []byte(fmt.Sprint(i)), ReceivedAt: time.Now()}
			if _, err := b.AppendWait(ctx, r); err != nil && ctx.Err() == nil {
				t.Errorf("append: %v", err)
			}
		}
	}()

	c := NewClient(sock)
	for i := 0; i < 20; i++ {
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		recs, err := c.Peek(ctx, 2)
		if err != nil || info.Records > 1 && len(recs) != 2 {
			t.Fatalf("peek with %d records: %d, %v", info.Records, len(recs), err)
		}
		var out bytes.Buffer
		skipped, err := c.Export(ctx, &out)
		if err != nil || skipped != 0 {
			t.Fatalf("export: %v, %d skipped", err, skipped)
		}
		if n := strings.Count(out.String(), "\n"); uint64(n) < info.Records {
			t.Fatalf("export of %d lines, after stats said %d records", n, info.Records)
		}
		rep, err := c.Verify(ctx)
		if err != nil || !rep.OK() {
			t.Fatalf("verify %+v, %v", rep, err)
		}
	}
	if _, err := c.Peek(ctx, -1); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("peek -1: %v", err)
	}

	cancel()
	wg.Wait()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket not removed: %v", err)
	}
	if _, err := c.Info(context.Background()); !errors.Is(err, ErrNotServing) {
		t.Errorf("info after stop: %v, want ErrNotServing", err)
	}
	c.Close()
}

func TestListenReplacesStaleSocketOnly(t *testing.T) {
	dir := t.TempDir()
	b, err := buffer.Open(filepath.Join(dir, "b.db"), buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sock := SocketPath(b.Path())

	// A socket left by a killed ferry: nothing answers, Listen replaces it.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := NewClient(sock).Info(context.Background()); !errors.Is(err, ErrNotServing) {
		t.Errorf("stale socket: %v, want ErrNotServing", err)
	}
	srv, err := Listen(sock, b, nil)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	srv.ln.Close()
	os.Remove(sock)

	if err := os.WriteFile(sock, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(sock, b, nil); err == nil {
		t.Error("Listen replaced a regular file")
	}
}

// The dead-letter endpoints list with filters and a limit, and replay and
// purge through the buffer's committer; bad parameters are a 400.
func TestServeDeadLetters(t *testing.T) {
	defer goleak.VerifyNone(t)
	b, err := buffer.Open(filepath.Join(t.TempDir(), "b.db"), buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 1; i <= 5; i++ {
		if _, err := b.AppendWait(ctx, &buffer.Record{Topic: "t", Payload: []byte(fmt.Sprint(i)), ReceivedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	for seq := uint64(1); seq <= 4; seq++ {
		b.DeadLetter(seq, buffer.Reason(fmt.Sprint("r", seq%2)), errors.New("no"))
	}
	for b.Stats().DeadLetterRecords < 4 {
		time.Sleep(10 * time.Millisecond)
	}
	sock := SocketPath(b.Path())
	srv, err := Listen(sock, b, nil)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	c := NewClient(sock)
	defer c.Close()

	list := func(f buffer.DeadLetterFilter, limit int) []uint64 {
		t.Helper()
		var seqs []uint64
		damaged, err := c.DeadLetters(ctx, f, limit, func(e buffer.DeadLetterEntry) error {
			if e.Record == nil || string(e.Record.Payload) != fmt.Sprint(e.Seq) || e.Detail != "no" {
				return fmt.Errorf("entry %+v", e)
			}
			seqs = append(seqs, e.Seq)
			return nil
		})
		if err != nil || damaged != 0 {
			t.Fatalf("dead letters %+v: %v, %d damaged", f, err, damaged)
		}
		return seqs
	}
	if got := fmt.Sprint(list(buffer.DeadLetterFilter{}, 0)); got != "[1 2 3 4]" {
		t.Errorf("all: %s", got)
	}
	if got := fmt.Sprint(list(buffer.DeadLetterFilter{Reason: "r1"}, 1)); got != "[1]" {
		t.Errorf("reason r1, limit 1: %s", got)
	}
	if got := fmt.Sprint(list(buffer.DeadLetterFilter{Seq: 4}, 0)); got != "[4]" {
		t.Errorf("seq 4: %s", got)
	}
	res, err := c.ReplayDeadLetters(ctx, buffer.DeadLetterFilter{Reason: "r0"})
	if err != nil || res.Replayed != 2 || res.FirstSeq != 6 || res.LastSeq != 7 {
		t.Errorf("replay: %+v, %v", res, err)
	}
	if n, err := c.PurgeDeadLetters(ctx, buffer.DeadLetterFilter{}); err != nil || n != 2 {
		t.Errorf("purge: %d, %v", n, err)
	}
	if st := b.Stats(); st.DeadLetterRecords != 0 || st.Records != 3 || st.Dropped[buffer.DropDeadLetterPurged] != 2 {
		t.Errorf("stats %+v", st)
	}
	if _, err := c.PurgeDeadLetters(ctx, buffer.DeadLetterFilter{}); err != nil {
		t.Errorf("purge of nothing: %v", err)
	}
	if _, err := c.get(ctx, "/v1/dlq?seq=x"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("seq=x: %v", err)
	}
	if _, err := c.get(ctx, "/v1/dlq/replay"); err == nil || !strings.Contains(err.Error(), "405") {
		t.Errorf("GET replay: %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}
