package buffer

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// writeBytes reads this process's bytes written to storage so far (Linux
// /proc/self/io write_bytes); -1 if unavailable.
func writeBytes() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("write_bytes: ")); ok {
			n, _ := strconv.ParseInt(string(v), 10, 64)
			return n
		}
	}
	return -1
}

// BenchmarkAppend measures durable appends of 200-byte records: each
// appender waits for its record's fsync before the next, as MQTT ingest with
// many messages in flight does. It reports records/s and the bytes written
// to disk per payload byte.
//
//	go test -run '^$' -bench Append -benchtime 200000x ./buffer
func BenchmarkAppend(b *testing.B) {
	for _, appenders := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("appenders=%d", appenders), func(b *testing.B) {
			buf, err := Open(filepath.Join(b.TempDir(), "buffer.db"), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer buf.Close()
			payload := bytes.Repeat([]byte("x"), 200)
			per := b.N / appenders
			if per == 0 {
				per = 1
			}
			wb0 := writeBytes()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range appenders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					done := make(chan error, 1)
					for range per {
						rec := &Record{Topic: "sensors/dev-01/telemetry", Payload: payload, QoS: 1, ReceivedAt: time.Now()}
						if err := buf.Append(rec, func(_ uint64, err error) { done <- err }); err != nil {
							b.Error(err)
							return
						}
						if err := <-done; err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			n := per * appenders
			b.ReportMetric(float64(n)/elapsed.Seconds(), "records/s")
			if wb := writeBytes(); wb0 >= 0 && wb >= 0 {
				b.ReportMetric(float64(wb-wb0)/float64(n*len(payload)), "disk-bytes/payload-byte")
			}
			b.ReportMetric(float64(buf.Stats().Commits), "commits")
		})
	}
}

// BenchmarkDrain measures reading from the head and releasing, as the
// forwarder does, with the records already buffered.
func BenchmarkDrain(b *testing.B) {
	buf, err := Open(filepath.Join(b.TempDir(), "buffer.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer buf.Close()
	appendRounds(b, buf, 1, b.N, 200)
	b.ResetTimer()
	start, wb0 := time.Now(), writeBytes()
	drainN(b, buf, b.N)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
	if wb := writeBytes(); wb0 >= 0 && wb >= 0 {
		// What releasing costs the disk: with bbolt's freelist rewritten
		// in every commit, this grew with the backlog.
		b.ReportMetric(float64(wb-wb0)/float64(b.N), "disk-bytes/record")
	}
}

// drainN reads n records from the head and releases them, as the forwarder
// does, and waits until the releases are committed.
func drainN(b *testing.B, buf *Buffer, n int) {
	var after uint64
	var recs []Record
	var err error
	for got := 0; got < n; {
		recs, err = buf.Read(context.Background(), after, 1000, 0, recs)
		if err != nil {
			b.Fatal(err)
		}
		got += len(recs)
		after = recs[len(recs)-1].Seq
		buf.Release(after)
	}
	if err := buf.flush(context.Background()); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkDrainBesideAppends drains a backlog of b.N records at 30,000
// records/s (what Kafka takes from a gateway) while one sensor appends and
// waits for each record to be durable (a commit each), and reports what a
// commit writes to disk. Releasing must not make commits dearer: bbolt
// writes its whole freelist with every commit, so freeing a backlog's pages
// faster than appends reuse them used to cost 98 KB per commit here (10 KB
// per drained record) instead of the 39 KB a single-record commit costs.
func BenchmarkDrainBesideAppends(b *testing.B) {
	buf, err := Open(filepath.Join(b.TempDir(), "buffer.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer buf.Close()
	appendRounds(b, buf, 1, b.N, 200)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // on a failure too: the sensor stops
	sensor := make(chan int, 1)
	go func() {
		n := 0
		for ctx.Err() == nil {
			if _, err := buf.AppendWait(ctx, &Record{Topic: "t", Payload: make([]byte, 200)}); err == nil {
				n++
			}
		}
		sensor <- n
	}()
	b.ResetTimer()
	start, wb0, c0 := time.Now(), writeBytes(), buf.Stats().Commits
	var after uint64
	var recs []Record
	for got := 0; got < b.N; {
		if recs, err = buf.Read(ctx, after, 1000, 0, recs); err != nil {
			b.Fatal(err)
		}
		got += len(recs)
		after = recs[len(recs)-1].Seq
		buf.Release(after)
		if d := time.Duration(got)*time.Second/30000 - time.Since(start); d > 0 {
			time.Sleep(d)
		}
	}
	if err := buf.flush(ctx); err != nil {
		b.Fatal(err)
	}
	cancel()
	appended := <-sensor
	commits := buf.Stats().Commits - c0
	b.ReportMetric(float64(appended), "sensor-records")
	b.ReportMetric(float64(commits), "commits")
	if wb := writeBytes(); wb0 >= 0 && wb >= 0 {
		b.ReportMetric(float64(wb-wb0)/float64(commits), "disk-bytes/commit")
	}
	info, err := buf.Info()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(info.FreePages), "free-pages")
}
