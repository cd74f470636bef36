package buffer

import (
	"bufio"
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
)

// mappedRSS is how much of path the process has mapped and resident, in
// bytes (the Rss of its mappings in /proc/self/smaps).
func mappedRSS(t *testing.T, path string) int {
	t.Helper()
	n, err := readMappedRSS(path)
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	return n
}

// readMappedRSS is mappedRSS for any goroutine: it returns the error.
func readMappedRSS(path string) (int, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	total, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":"):
			in = len(fields) >= 6 && fields[len(fields)-1] == path
		case in && len(fields) >= 2 && fields[0] == "Rss:":
			kb, _ := strconv.Atoi(fields[1])
			total += kb << 10
		}
	}
	return total, sc.Err()
}

// A drain goes through the whole backlog twice in the memory map: Read
// copies the records out, and the release's commit parses the batches it
// retires. Neither may leave what it went through resident: the map's
// pages are dropped every unmapEvery bytes, the committer's included.
func TestDrainKeepsMappedPagesFew(t *testing.T) {
	b, path := openTest(t)
	appendRounds(t, b, 20, 1000, 500) // about 10 MB of records, in 20 commits
	var after uint64
	var recs []Record
	peak := 0
	for after < b.Stats().LastSeq {
		var err error
		recs, err = b.Read(context.Background(), after, 1000, 0, recs)
		if err != nil {
			t.Fatal(err)
		}
		after = recs[len(recs)-1].Seq
		b.Release(after)
		// Measured with no commit under way: what stays resident.
		waitUntil(t, "the release committed", func() bool {
			st := b.Stats()
			return st.Records == 0 || st.FirstSeq > after
		})
		peak = max(peak, mappedRSS(t, path))
	}
	// What went through the map since the last unmapPages (less than
	// unmapEvery), one Read's or one release's records on top, and the
	// pages around them that the kernel maps with each fault.
	if limit := unmapEvery + 1<<20; peak > limit {
		t.Errorf("up to %d bytes of the buffer file resident during a 10 MB drain, want at most %d", peak, limit)
	}
}

// A release of a whole backlog is one commit, which parses every batch it
// retires: what it goes through is dropped from the process as it goes,
// not at the end of the commit (20 MB resident at once before).
func TestReleaseInOneCommitKeepsMappedPagesFew(t *testing.T) {
	b, path := openTest(t)
	appendRounds(t, b, 40, 1000, 500) // about 20 MB of records, in 40 commits
	last := b.Stats().LastSeq
	if rss := mappedRSS(t, path); rss > unmapEvery+1<<20 {
		t.Fatalf("%d bytes of the buffer file resident before the release", rss)
	}

	// Sample the map's resident pages while the release commits.
	type sampled struct {
		peak int
		err  error
	}
	stop, done := make(chan struct{}), make(chan sampled)
	go func() {
		var s sampled
		for {
			var n int
			if n, s.err = readMappedRSS(path); s.err != nil {
				<-stop
				done <- s
				return
			}
			s.peak = max(s.peak, n)
			select {
			case <-stop:
				done <- s
				return
			default:
			}
		}
	}()
	b.Release(last)
	waitUntil(t, "the release committed", func() bool { return b.Stats().Records == 0 })
	close(stop)
	s := <-done
	if s.err != nil {
		t.Fatalf("sampling /proc/self/smaps: %v", s.err)
	}
	if peak, limit := s.peak, unmapEvery+2<<20; peak > limit {
		t.Errorf("up to %d bytes of the buffer file resident while 20 MB were released in one commit, want at most %d", peak, limit)
	}
}
