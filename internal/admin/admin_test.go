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
