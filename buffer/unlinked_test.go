package buffer

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The case: Kafka down, 5,000 messages, the file deleted, 5,000
// more, a restart: all 10,000 must be there. And a file put in its place
// is kept, not overwritten.
func TestDeletedFileIsWrittenAgain(t *testing.T) {
	for _, mode := range []struct {
		name    string
		opts    Options
		replace bool
	}{
		{"strict deleted", Options{}, false},
		{"delayed deleted", Options{WriteDelay: 20 * time.Millisecond}, false},
		{"strict replaced", Options{}, true},
	} {
		t.Run(mode.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "buffer.db")
			b, err := Open(path, mode.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			appendRounds(t, b, 5, 1000, 100)
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if mode.replace {
				if err := os.WriteFile(path, []byte("someone else's file"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			appendRounds(t, b, 5, 1000, 100) // acknowledged only once on a file at path
			if st := b.Stats(); st.Recreated != 1 {
				t.Fatalf("Stats.Recreated = %d, want 1", st.Recreated)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			b, err = Open(path, mode.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if got := b.Stats().Records; got != 10000 {
				t.Fatalf("after a restart the buffer holds %d records, want 10000", got)
			}
			if mode.replace {
				kept, _ := filepath.Glob(path + ".replaced-*")
				if len(kept) != 1 {
					t.Fatalf("the file found in the buffer's place is not kept: %v", kept)
				}
				if got, _ := os.ReadFile(kept[0]); string(got) != "someone else's file" {
					t.Fatalf("kept file holds %q", got)
				}
			}
		})
	}
}

// Deleted while idle: the committer notices within fileCheckInterval,
// without a commit.
func TestDeletedFileNoticedWhileIdle(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the idle check")
	}
	path := filepath.Join(t.TempDir(), "buffer.db")
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.AppendWait(context.Background(), rec(1)); err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	deadline := time.Now().Add(fileCheckInterval + 5*time.Second)
	for b.Stats().Recreated == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the deleted file was not noticed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("not written again: %v", err)
	}
}

// A killed `ferry buffer compact` leaves path.compact behind; the next
// Open removes it. A 0-byte file is not a buffer for verify.
func TestLeftoversAndEmptyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "buffer.db")
	fill(t, path, 3)
	for _, suffix := range []string{".compact", ".recreate", ".salvage.tmp", ".salvage"} {
		if err := os.WriteFile(path+suffix, make([]byte, 8192), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	for _, suffix := range []string{".compact", ".recreate", ".salvage.tmp", ".salvage"} {
		if _, err := os.Stat(path + suffix); !os.IsNotExist(err) {
			t.Errorf("leftover %s not removed: %v", suffix, err)
		}
	}

	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = OpenReadOnly(empty)
	if err == nil || !strings.Contains(err.Error(), "empty file (0 bytes)") {
		t.Fatalf("OpenReadOnly of a 0-byte file: %v", err)
	}
}

// Deleted after the last commit, then a clean stop with nothing more to
// write: Close writes the file back before it lets go of it.
func TestDeletedThenClosedKeepsRecords(t *testing.T) {
	for _, o := range []Options{{}, {WriteDelay: 20 * time.Millisecond}} {
		path := filepath.Join(t.TempDir(), "buffer.db")
		b, err := Open(path, o)
		if err != nil {
			t.Fatal(err)
		}
		appendRounds(t, b, 2, 1000, 100)
		time.Sleep(300 * time.Millisecond)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		b, err = Open(path, o)
		if err != nil {
			t.Fatal(err)
		}
		got := b.Stats().Records
		b.Close()
		if got != 2000 {
			t.Errorf("opts %+v: after rm + clean stop the buffer holds %d records, want 2000", o, got)
		}
	}
}
