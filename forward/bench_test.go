package forward

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/testenv"
	"github.com/ferry-edge/ferry/internal/topic"
)

// BenchmarkDrain measures how fast a backlog drains: b.N records of 200
// bytes of JSON telemetry from 100 devices, on kfake with 4 partitions,
// directly and over a link with a 50 ms round trip. In the same run it
// measures a plain franz-go producer (acks=all, idempotent, its defaults
// but for the compression, which is ferry's: both put the same bytes on
// the wire) writing the same records from memory: "franz-go" is the
// ceiling, "ferry" drains them from a buffer file, with ferry's default
// buffer settings (buffer.write_delay 100ms), while a sensor keeps
// appending 1,000 live records a second, which must be delivered too.
//
//	go test -run '^$' -bench Drain -benchtime 1000000x ./forward
func BenchmarkDrain(b *testing.B) {
	for _, rtt := range []time.Duration{0, 50 * time.Millisecond} {
		b.Run(fmt.Sprintf("rtt=%v/franz-go", rtt), func(b *testing.B) { benchPlain(b, rtt) })
		b.Run(fmt.Sprintf("rtt=%v/ferry", rtt), func(b *testing.B) { benchFerry(b, rtt) })
	}
}

const benchDevices = 100

func benchKafka(b *testing.B, rtt time.Duration) *testenv.Kafka {
	b.Helper()
	k, err := testenv.StartKafkaWith(testenv.KafkaConfig{Partitions: 4, RTT: rtt}, "t")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(k.Close)
	return k
}

// benchCompression is the codec both producers use: ferry's default
// (forward.kafka.compression).
const benchCompression = "zstd"

// benchWriteDelay is ferry's default buffer.write_delay.
const benchWriteDelay = 100 * time.Millisecond

// benchRecord is record i: about 200 bytes of JSON telemetry whose values
// vary as a sensor's do (padding would compress far better than real data
// does and flatter a compressing producer).
func benchRecord(i int) *buffer.Record {
	dev := i % benchDevices
	p := fmt.Appendf(make([]byte, 0, 208), `{"device":"dev-%03d","seq":%d,"ts":%d,"temp":%.2f,"hum":%.2f,"pressure":%.1f,"battery":%d,"rssi":%d,"fw":"2.4.1","status":"ok","zone":"hall-%d","co2":%d,"lux":%d,"vib":[%.3f,%.3f]}`,
		dev, i, 1796000000000+int64(i)*7, 18+float64(i*37%900)/100, 30+float64(i*53%4000)/100, 990+float64(i*11%400)/10,
		20+i*7%80, -40-i*3%50, dev%7, 400+i*29%1600, i*31%20000, float64(i*13%1000)/1000, float64(i*17%1000)/1000)
	return &buffer.Record{Topic: fmt.Sprintf("s/dev-%03d", i%benchDevices), Payload: p, QoS: 1, ReceivedAt: time.Now(), Seq: uint64(i + 1)}
}

func benchRoutes(b testing.TB) []Route {
	b.Helper()
	m, err := topic.ParsePattern("s/{device}")
	if err != nil {
		b.Fatal(err)
	}
	r := Route{Match: m}
	if r.Topic, err = topic.ParseTemplate("t", m.Names()); err != nil {
		b.Fatal(err)
	}
	if r.Key, err = topic.ParseTemplate("{device}", m.Names()); err != nil {
		b.Fatal(err)
	}
	return []Route{r}
}

func benchPlain(b *testing.B, rtt time.Duration) {
	k := benchKafka(b, rtt)
	f := &Forwarder{cfg: Config{GatewayID: "gw"}, gateway: []byte("gw"), bufferID: []byte("0123456789abcdef")}
	if err := f.SetRoutes(benchRoutes(b)); err != nil {
		b.Fatal(err)
	}
	recs := make([]*kgo.Record, b.N)
	var vals []string
	for i := range recs {
		recs[i] = new(kgo.Record)
		_, vals = f.route(*f.routes.Load(), benchRecord(i), time.Now(), recs[i], nil, nil, vals)
	}
	codec, err := compression(benchCompression)
	if err != nil {
		b.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers()...), kgo.MaxBufferedRecords(10000), kgo.ProducerBatchCompression(codec))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: "t", Value: []byte("warm up")}).FirstErr(); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	var failed error
	var mu sync.Mutex
	b.ResetTimer()
	start := time.Now()
	for _, r := range recs {
		wg.Add(1)
		cl.Produce(context.Background(), r, func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				failed = err
				mu.Unlock()
			}
			wg.Done()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if failed != nil {
		b.Fatal(failed)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
}

// benchBacklog opens a buffer with ferry's default write delay and n
// records of benchRecord in it, durable; it is closed when tb ends.
func benchBacklog(tb testing.TB, n int) *buffer.Buffer {
	tb.Helper()
	buf, err := buffer.Open(filepath.Join(tb.TempDir(), "buffer.db"), buffer.Options{WriteDelay: benchWriteDelay})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { buf.Close() })
	for i := range n {
		if err := buf.Append(benchRecord(i), func(_ uint64, err error) {
			if err != nil {
				panic(err)
			}
		}); err != nil {
			tb.Fatal(err)
		}
	}
	for buf.Stats().Records < uint64(n) {
		time.Sleep(10 * time.Millisecond)
	}
	return buf
}

func benchFerry(b *testing.B, rtt time.Duration) {
	k := benchKafka(b, rtt)
	buf := benchBacklog(b, b.N)
	f, err := New(Config{Brokers: k.Brokers(), Routes: benchRoutes(b), GatewayID: "gw", Compression: benchCompression}, buf)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	live := make(chan int, 1)
	go func() { // a live sensor: 1,000 records a second during the drain
		n := 0
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				live <- n
				return
			case <-t.C:
				if buf.Append(benchRecord(n), func(uint64, error) {}) == nil {
					n++
				}
			}
		}
	}()
	done := make(chan error, 1)
	b.ResetTimer()
	start := time.Now()
	go func() { done <- f.Run(ctx) }()
	for f.Stats().Delivered < uint64(b.N) {
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cancel()
	n := <-live
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if st := f.Stats(); len(st.DeadLettered) > 0 || st.Unrouted > 0 {
		b.Fatalf("not all delivered: %+v", st)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
	b.ReportMetric(float64(n), "live-records")
}
