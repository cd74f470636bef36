package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// TestReloadOnSIGHUP changes the file under a running ferry and sends
// SIGHUP: the log level changes live, and so do the routes (a message
// published after the reload goes to the new route's topic) and the
// buffer's limits; a buffer path change is refused by name; an invalid file
// is refused with its position; ferry runs on.
func TestReloadOnSIGHUP(t *testing.T) {
	broker := testenv.NewBroker(t)
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	configPath := writeConfig(t, broker, kafka, topic, filepath.Join(t.TempDir(), "buffer.db"), "")
	orig, err := os.ReadFile(configPath)
	if err != nil {
		t.Fatal(err)
	}
	ferry := startFerry(t, configPath)
	ferry.waitSubscribed(t)

	hup := func(content, wantLog string) {
		t.Helper()
		if err := os.WriteFile(configPath, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := ferry.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(ferry.logText(), wantLog) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log after SIGHUP:\n%s", wantLog, ferry.logText())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	hup(strings.Replace(string(orig), "level: info", "level: debug", 1), `msg="reload: log level changed" from=info to=debug`)
	other := testenv.NewTopic(t, kafka)
	hup(strings.Replace(string(orig), "topic: "+topic, "topic: "+other, 1), `msg="reload: routes changed`)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := testenv.Publish(ctx, broker.URL(), "sensors/dev-77/telemetry", 1, []byte("after the reload")); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(append(kafka.ClientOpts(), kgo.ConsumeTopics(other), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for got := false; !got; {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("the message published after the reload is not in the new route's topic %s", other)
		}
		fs.EachRecord(func(r *kgo.Record) { got = got || string(r.Value) == "after the reload" })
	}
	hup(strings.Replace(string(orig), "buffer:\n", "buffer:\n  max_bytes: 512MiB\n  max_age: 36h\n", 1), `msg="reload: buffer limits changed; the next commit applies them" max_bytes=512MiB max_age=36h0m0s`)
	hup(strings.Replace(string(orig), "buffer.db", "other.db", 1), `keys=buffer.path`)
	hup("mqtt:\n  url: 42\n", "reload: invalid configuration; the running one stays")
	if !strings.Contains(ferry.logText(), "ferry.yaml:") {
		t.Errorf("the invalid file's error names no position:\n%s", ferry.logText())
	}
	if code := ferry.stop(t, syscall.SIGTERM); code != exitOK {
		t.Fatalf("SIGTERM after reloads: exit %d\n%s", code, ferry.logText())
	}
}
