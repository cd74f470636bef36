package buffer

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// depthFixture is a buffer file filled to a depth once per process, shared
// by the depth benchmarks.
var depthFixture struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// benchDepth is FERRY_BENCH_DEPTH records (default 100000; the issue's
// figure is measured with FERRY_BENCH_DEPTH=10000000).
func benchDepth() int {
	if n, err := strconv.Atoi(os.Getenv("FERRY_BENCH_DEPTH")); err == nil && n > 0 {
		return n
	}
	return 100_000
}

// appendConcurrently appends n 200-byte records from 256 goroutines, each
// waiting for its record to be durable, and returns the elapsed time.
func appendConcurrently(b *Buffer, n int) (time.Duration, error) {
	const appenders = 256
	payload := bytes.Repeat([]byte("x"), 200)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, appenders)
	for g := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := make(chan error, 1)
			for i := g; i < n; i += appenders {
				rec := &Record{Topic: "sensors/dev-01/telemetry", Payload: payload, QoS: 1, ReceivedAt: time.Now()}
				if err := b.Append(rec, func(_ uint64, err error) { done <- err }); err != nil {
					errs <- err
					return
				}
				if err := <-done; err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return time.Since(start), <-errs
}

func fixture(b *testing.B) string {
	f := &depthFixture
	f.once.Do(func() {
		f.dir, f.err = os.MkdirTemp("", "ferry-depth-")
		if f.err != nil {
			return
		}
		f.path = filepath.Join(f.dir, "buffer.db")
		buf, err := Open(f.path, Options{})
		if err != nil {
			f.err = err
			return
		}
		d, err := appendConcurrently(buf, benchDepth())
		info, _ := buf.Info()
		if err == nil {
			err = buf.Close()
		}
		f.err = err
		fmt.Fprintf(os.Stderr, "depth fixture: %d records in %v, file %d MiB, %d free pages\n",
			benchDepth(), d.Round(time.Millisecond), info.FileSize>>20, info.FreePages)
	})
	if f.err != nil {
		b.Fatal(f.err)
	}
	// A deep backlog lies on flash, not in memory: a gateway has less RAM
	// than its 2.7 GB buffer, and the records were written hours or days
	// ago. So each deep measurement starts with the file out of the page
	// cache, unless FERRY_BENCH_WARM is set (to compare the buffer's own
	// cost, with the storage out of the picture).
	if os.Getenv("FERRY_BENCH_WARM") == "" {
		if err := dropCache(f.path); err != nil {
			b.Fatal(err)
		}
	}
	return f.path
}

// BenchmarkDepth measures open, durable append and drain with a deep
// buffer, to compare with an empty one (depth=0):
//
//	FERRY_BENCH_DEPTH=10000000 go test -run '^$' -bench Depth -benchtime 400000x -timeout 1h ./buffer
//
// Run it several times (benchstat -col /depth compares the two columns):
// a commit's fsync time on a shared machine varies by 20% from run to run.
func BenchmarkDepth(b *testing.B) {
	defer func() {
		if depthFixture.dir != "" {
			os.RemoveAll(depthFixture.dir)
		}
	}()
	for _, depth := range []int{0, benchDepth()} {
		path := func(b *testing.B) string {
			if depth == 0 {
				return filepath.Join(b.TempDir(), "buffer.db")
			}
			return fixture(b)
		}
		b.Run(fmt.Sprintf("depth=%d/open", depth), func(b *testing.B) {
			p := path(b)
			var total time.Duration
			n := min(b.N, 20) // an open is slow to repeat and -benchtime is set for appends
			for range n {
				start := time.Now()
				buf, err := Open(p, Options{})
				if err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
				if st := buf.Stats(); st.Records < uint64(depth) {
					b.Fatalf("opened with %d records, want %d", st.Records, depth)
				}
				buf.Close()
			}
			b.ReportMetric(float64(total.Microseconds())/float64(n)/1000, "ms/open")
		})
		b.Run(fmt.Sprintf("depth=%d/append", depth), func(b *testing.B) {
			buf, err := Open(path(b), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer buf.Close()
			b.ResetTimer()
			d, err := appendConcurrently(buf, b.N)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/d.Seconds(), "records/s")
		})
		b.Run(fmt.Sprintf("depth=%d/drain", depth), func(b *testing.B) {
			p := path(b)
			if depth == 0 { // the records to drain, then a fresh open as in the deep case
				buf, err := Open(p, Options{})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := appendConcurrently(buf, b.N); err != nil {
					b.Fatal(err)
				}
				buf.Close()
				if os.Getenv("FERRY_BENCH_WARM") == "" { // read from storage, as the deep one is
					if err := dropCache(p); err != nil {
						b.Fatal(err)
					}
				}
			}
			buf, err := Open(p, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer buf.Close()
			b.ResetTimer()
			start, wb0, c0 := time.Now(), writeBytes(), buf.Stats().Commits
			drainN(b, buf, b.N)
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
			b.ReportMetric(float64(writeBytes()-wb0)/float64(b.N), "disk-bytes/record")
			b.ReportMetric(float64(buf.Stats().Commits-c0), "commits")
		})
	}
}
