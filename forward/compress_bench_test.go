package forward

import (
	"context"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// batchBytes counts what produce batches put on the wire: after
// compression, and before.
type batchBytes struct{ wire, raw atomic.Int64 }

func (c *batchBytes) OnProduceBatchWritten(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.ProduceBatchMetrics) {
	c.wire.Add(int64(m.CompressedBytes))
	c.raw.Add(int64(m.UncompressedBytes))
}

// BenchmarkCompression drains b.N records of 200-byte JSON telemetry (see
// benchRecord) from a buffer to kfake with each codec, and reports the
// bytes produce batches put on the wire per record and the process's CPU
// time per 100,000 records (ferry and the in-process kfake together:
// kfake stores what it is sent, so fewer bytes cost it less too). With
// rtt, over a link with that round trip.
//
//	go test -run '^$' -bench Compression -benchtime 200000x ./forward
func BenchmarkCompression(b *testing.B) {
	for _, rtt := range []time.Duration{0, 100 * time.Millisecond} {
		for _, codec := range []string{"none", "snappy", "lz4", "zstd", "gzip"} {
			b.Run("rtt="+rtt.String()+"/"+codec, func(b *testing.B) { benchCodec(b, codec, rtt) })
		}
	}
}

func benchCodec(b *testing.B, codec string, rtt time.Duration) {
	k := benchKafka(b, rtt)
	buf := benchBacklog(b, b.N)
	var counted batchBytes
	f, err := New(Config{Brokers: k.Brokers(), Routes: benchRoutes(b), GatewayID: "gw", Compression: codec, Observers: []kgo.Hook{&counted}}, buf)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cpu0 := cpuTime()
	b.ResetTimer()
	start := time.Now()
	go func() { done <- f.Run(ctx) }()
	for f.Stats().Delivered < uint64(b.N) {
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := cpuTime() - cpu0
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	n := float64(b.N)
	b.ReportMetric(n/elapsed.Seconds(), "records/s")
	b.ReportMetric(cpu.Seconds()/n*100_000, "CPU-s/100k")
	b.ReportMetric(float64(counted.wire.Load())/n, "wire-B/record")
	b.ReportMetric(float64(counted.raw.Load())/float64(max(counted.wire.Load(), 1)), "ratio")
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
