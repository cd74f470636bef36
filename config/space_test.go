package config

import (
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestSpaceWarnings: LoadAndCheck warns, through Config.Warnings as for
// every other warning, when the buffer can never reach its bounds on the
// file system that holds it: the file system fills first, and then
// max_bytes and when_full never apply.
func TestSpaceWarnings(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the file system is measured on Linux only")
	}
	dir := t.TempDir()
	fs, ok := statFS(dir)
	if !ok || fs.total <= 0 {
		t.Fatalf("statfs %s: %+v, %v", dir, fs, ok)
	}
	checked := func(buffer string) *Config {
		t.Helper()
		doc := fmt.Sprintf("gateway_id: g\nmqtt:\n  url: tcp://127.0.0.1:1883\n  subscriptions: [{filter: a/#}]\n"+
			"forward:\n  kafka: {brokers: [127.0.0.1:9092]}\n  routes: [{match: a/#, topic: t}]\n"+
			"buffer:\n  path: %s\n%s", filepath.Join(dir, "sub", "buffer.db"), buffer)
		// testEnv: 64-bit limits on 32-bit test machines too.
		c, err := load(writeFile(t, t.TempDir(), "ferry.yaml", doc), testEnv(), true)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	// Twice the whole file system: the buffer can never reach it. The
	// directory does not exist yet (systemd creates it): the file system
	// that will hold it is measured.
	c := checked(fmt.Sprintf("  max_bytes: %d\n", 2*fs.total))
	want := fmt.Sprintf("/ferry.yaml:10:14: buffer.max_bytes: the buffer may take %s (max_bytes %v plus max_dead_letter_bytes 64MiB), more than the whole file system holding %s (%s)",
		approxSize(2*fs.total+64<<20), ByteSize(2*fs.total), filepath.Join(dir, "sub"), approxSize(fs.total))
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], want) {
		t.Errorf("warnings %q\nwant one holding %q", c.Warnings, want)
	}

	// Small bounds fit; no bound is the operator's choice.
	for _, buffer := range []string{"  max_bytes: 1MiB\n  max_dead_letter_bytes: 1MiB\n", "  max_bytes: 0\n  max_dead_letter_bytes: 0\n"} {
		if c := checked(buffer); len(c.Warnings) != 0 {
			t.Errorf("%q: warnings %q", buffer, c.Warnings)
		}
	}

	// Load does not look at the machine.
	c, err := load(writeFile(t, t.TempDir(), "ferry.yaml", fmt.Sprintf("gateway_id: g\nmqtt:\n  url: tcp://127.0.0.1:1883\n  subscriptions: [{filter: a/#}]\n"+
		"forward:\n  kafka: {brokers: [127.0.0.1:9092]}\n  routes: [{match: a/#, topic: t}]\nbuffer:\n  max_bytes: %d\n", 2*fs.total)), testEnv(), false)
	if err != nil || len(c.Warnings) != 0 {
		t.Errorf("Load: %v, warnings %q", err, c.Warnings)
	}
}

// TestSpaceWarning covers what statfs cannot be made to say in a test.
func TestSpaceWarning(t *testing.T) {
	const GiB = 1 << 30
	for _, tc := range []struct {
		maxBytes, deadLetters ByteSize
		fs                    fsSpace
		file                  int64
		want                  string
	}{
		{maxBytes: 1 * GiB, deadLetters: 64 << 20, fs: fsSpace{total: 32 * GiB, avail: 20 * GiB}},
		// The file system's free space and the file itself are what the
		// buffer can have.
		{maxBytes: 1 * GiB, deadLetters: 64 << 20, fs: fsSpace{total: 32 * GiB, avail: 1 * GiB}, file: 64 << 20},
		{maxBytes: 1 * GiB, deadLetters: 64 << 20, fs: fsSpace{total: 32 * GiB, avail: 1 * GiB}, file: 1 << 20,
			want: "the buffer may take 1.1GiB (max_bytes 1GiB plus max_dead_letter_bytes 64MiB), more than the 1.0GiB it can have on the file system holding /b (1.0GiB free plus the buffer file's 1.0MiB): " +
				"the file system fills before max_bytes applies, and then ferry can store no message; lower max_bytes or free space"},
		{maxBytes: 4 * GiB, fs: fsSpace{total: 3*GiB + 1, avail: 3 * GiB},
			want: "the buffer may take 4.0GiB (max_bytes 4GiB), more than the whole file system holding /b (3.0GiB): " +
				"the file system fills before max_bytes applies, and then ferry can store no message; lower max_bytes"},
	} {
		got := spaceWarning(Buffer{Path: "/b/buffer.db", MaxBytes: tc.maxBytes, MaxDeadLetterBytes: tc.deadLetters}, tc.fs, tc.file)
		if got != tc.want {
			t.Errorf("%+v:\ngot  %q\nwant %q", tc, got, tc.want)
		}
	}
}
