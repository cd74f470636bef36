package forward

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/testenv"
)

// The bucket's arithmetic, on a clock of its own.
func TestRateCapBucket(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	c := newRateCap(1000, t0)
	if d := c.delay(t0); d != 0 {
		t.Fatalf("a new bucket holds the first chunk back %v", d)
	}
	c.spend(1250, t0) // the burst (250) and 1000 more: a debt of 1 s
	for _, tc := range []struct {
		at   time.Duration
		want time.Duration
	}{{0, time.Second}, {250 * time.Millisecond, 750 * time.Millisecond}, {time.Second, 0}} {
		if d := c.delay(t0.Add(tc.at)); d != tc.want {
			t.Errorf("at %v: delay %v, want %v", tc.at, d, tc.want)
		}
	}
	// Idle time is saved up to the burst only.
	t1 := t0.Add(time.Hour)
	c.spend(250, t1)
	if d := c.delay(t1); d != 0 {
		t.Errorf("after an idle hour, a quarter second of bytes is held back %v", d)
	}
	c.spend(1, t1)
	if d := c.delay(t1); d != time.Millisecond {
		t.Errorf("the burst is more than a quarter second: delay %v, want 1ms", d)
	}
	// A spend far above the budget (one large record) is a debt, paid off
	// over time: never a wedge.
	c.spend(1_000_000, t1)
	if d := c.delay(t1.Add(1000 * time.Second)); d != time.Millisecond {
		t.Errorf("a 1 MB record at 1000 B/s: delay after 1000 s %v, want 1ms", d)
	}
	if n := c.written.Load(); n != 1_001_501 {
		t.Errorf("written %d, want 1001501", n)
	}
	// A chunk is half a second of budget on the wire.
	if n := c.chunkBytes(1); n != 500 {
		t.Errorf("chunkBytes(1) = %d, want 500", n)
	}
	if n := c.chunkBytes(0.25); n != 2000 {
		t.Errorf("chunkBytes(0.25) = %d, want 2000 (records compressed 4 to 1)", n)
	}
	if n := newRateCap(1, t0).chunkBytes(1); n != 1 {
		t.Errorf("chunkBytes at 1 B/s = %d, want 1 (one record goes)", n)
	}

	// Limiting: from the first hold until capHold after the last.
	sec := int64(time.Second)
	if !c.hold(0, sec) || c.hold(2*sec, 3*sec) {
		t.Error("hold: only the first hold of a spell starts it")
	}
	if d := c.check(3*sec + int64(capHold) - 1); d != 0 || !c.limiting.Load() {
		t.Errorf("the spell ended %v after the last hold, before capHold", capHold-1)
	}
	if d := c.check(3*sec + int64(capHold)); d != 3*time.Second || c.limiting.Load() {
		t.Errorf("check after capHold: %v, limiting %v; want a spell of 3s, over", d, c.limiting.Load())
	}
	if d := c.check(100 * sec); d != 0 {
		t.Errorf("a spell ended twice (%v)", d)
	}
}

// A backlog drains at the cap, measured at the broker's sockets, while
// live records keep coming; the status record, Stats and the log say that
// the cap is what limits the drain, and the log says when it no longer
// does.
func TestRateCapDrain(t *testing.T) {
	const limit = 200_000
	var log logBuffer
	res := capDrain(t, capDrainConfig{
		limit: limit, backlog: 4000, live: 50,
		status: true, log: slog.New(slog.NewTextHandler(&log, nil)),
	})
	t.Logf("%d bytes in %v (%.0f B/s, %.2f of the cap), %.0f B per record; 1 s windows at most %.2f of the cap",
		res.bytes(), res.elapsed().Round(time.Millisecond), res.rate(), res.rate()/limit, res.perRecord(), res.maxWindow(time.Second)/limit)
	if r := res.rate() / limit; r < 0.75 || r > 1.2 {
		t.Errorf("the drain ran at %.2f of the cap, want 0.75 to 1.2", r)
	}
	// At most the burst and a chunk (0.75 s) above the rate in any window.
	if r := res.maxWindow(time.Second) / limit; r > 2 {
		t.Errorf("a 1 s window ran at %.2f of the cap, want at most 2", r)
	}
	if !res.limited {
		t.Error("Stats().RateLimited was never true during the drain")
	}
	if !strings.Contains(log.String(), "the byte-rate cap limits forwarding") {
		t.Errorf("the log does not say the cap limits forwarding:\n%s", log.String())
	}
	var st Status
	for _, r := range res.status {
		if err := json.Unmarshal(r, &st); err != nil {
			t.Fatal(err)
		}
		if st.RateLimited {
			break
		}
	}
	if !st.RateLimited || st.MaxBytesPerSecond != limit {
		t.Errorf("no status record says the cap limits the drain: last %+v", st)
	}
	if !strings.Contains(log.String(), "the byte-rate cap no longer limits forwarding") || res.f.Stats().RateLimited {
		t.Errorf("the log or Stats still say the cap limits forwarding after the drain (RateLimited %v):\n%s", res.f.Stats().RateLimited, log.String())
	}
}

// A record larger than a second of budget goes, alone, and a debt delays
// the next.
func TestRateCapLargeRecord(t *testing.T) {
	k, err := testenv.StartKafka("t")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	b := newBuffer(t)
	big := bytes.Repeat([]byte("x"), 20_000)
	for range 3 {
		if _, err := b.AppendWait(context.Background(), &buffer.Record{Topic: "s/big", Payload: big, ReceivedAt: time.Now(), QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	f, err := New(Config{Brokers: k.Brokers(), Routes: []Route{route(t, "s/#", "t", "")}, MaxBytesPerSecond: 10_000}, b)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	defer run(t, f)()
	waitFor(t, "3 records of 20 kB at 10 kB/s", func() bool { return f.Stats().Delivered == 3 })
	// The first goes at once, each of the others after the debt of the
	// one before: about 4 s.
	if d := time.Since(start); d < 3*time.Second {
		t.Errorf("60 kB went in %v at 10 kB/s", d)
	}
	if st := f.Stats(); st.Chunks != 3 {
		t.Errorf("%d chunks, want 3: one record each", st.Chunks)
	}
}

type capDrainConfig struct {
	limit       int           // MaxBytesPerSecond
	backlog     int           // records in the buffer before forwarding starts
	live        int           // records a second appended during the drain
	compression string        // Config.Compression
	rtt         time.Duration // the link's round trip
	status      bool          // send a status record every 500 ms
	log         *slog.Logger
}

// capDrainResult is what the broker read over time while the backlog
// drained.
type capDrainResult struct {
	f       *Forwarder
	samples []capSample
	records int      // backlog records delivered in the samples' time
	limited bool     // Stats().RateLimited was seen during the drain
	status  [][]byte // status records sent
}

type capSample struct {
	at    time.Duration // since forwarding started
	bytes int64         // read by the broker since then
}

// capDrain drains a backlog with a cap and samples what the broker reads
// every 100 ms until the backlog is delivered. With cfg.status it then
// waits for the cap to stop limiting and collects the status records.
func capDrain(tb testing.TB, cfg capDrainConfig) capDrainResult {
	tb.Helper()
	k, err := testenv.StartKafkaWith(testenv.KafkaConfig{Partitions: 4, RTT: cfg.rtt}, "t", "ferry.status")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(k.Close)
	buf := benchBacklog(tb, cfg.backlog)
	fc := Config{Brokers: k.Brokers(), Routes: benchRoutes(tb), GatewayID: "gw", Compression: cfg.compression,
		MaxBytesPerSecond: cfg.limit, Logger: cfg.log}
	if cfg.status {
		fc.StatusTopic, fc.StatusInterval = "ferry.status", 500*time.Millisecond
	}
	f, err := New(fc, buf)
	if err != nil {
		tb.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { // a live sensor during the drain
		t := time.NewTicker(time.Second / time.Duration(max(cfg.live, 1)))
		defer t.Stop()
		for i := cfg.backlog; cfg.live > 0; i++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := buf.Append(benchRecord(i), func(uint64, error) {}); err != nil {
					return
				}
			}
		}
	})
	done := make(chan error, 1)
	base := k.Received()
	start := time.Now()
	go func() { done <- f.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run: %v", err)
		}
	}()

	res := capDrainResult{f: f, samples: []capSample{{0, 0}}}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for range tick.C {
		st := f.Stats()
		res.limited = res.limited || st.RateLimited
		res.samples = append(res.samples, capSample{time.Since(start), k.Received() - base})
		if st.Delivered >= uint64(cfg.backlog) {
			res.records = int(st.Delivered)
			break
		}
		if len(st.DeadLettered) > 0 || st.Unrouted > 0 {
			tb.Fatalf("not all delivered: %+v", st)
		}
		if time.Since(start) > 10*time.Minute {
			tb.Fatalf("the backlog did not drain in 10 minutes: %+v", st)
		}
	}
	if !cfg.status {
		return res
	}
	// The cap stops limiting capHold after the backlog: live records alone
	// go within it.
	deadline := time.Now().Add(capHold + 20*time.Second)
	for f.Stats().RateLimited {
		if time.Now().After(deadline) {
			tb.Fatalf("the cap still limits forwarding %v after the backlog drained", time.Since(deadline)+capHold+20*time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
	res.status = readAll(tb, k.Brokers(), "ferry.status")
	return res
}

// readAll returns the values of the records in topic: those that came
// before a poll that waited a second for more.
func readAll(tb testing.TB, brokers []string, topicName string) [][]byte {
	tb.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topicName))
	if err != nil {
		tb.Fatal(err)
	}
	defer cl.Close()
	var out [][]byte
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		if len(fs.Records()) == 0 {
			return out
		}
		for _, r := range fs.Records() {
			out = append(out, r.Value)
		}
	}
}

func (r capDrainResult) elapsed() time.Duration { return r.samples[len(r.samples)-1].at }
func (r capDrainResult) bytes() int64           { return r.samples[len(r.samples)-1].bytes }

// rate is the drain's bytes a second, from start to end.
func (r capDrainResult) rate() float64 { return float64(r.bytes()) / r.elapsed().Seconds() }

func (r capDrainResult) perRecord() float64 { return float64(r.bytes()) / float64(r.records) }

// maxWindow is the highest rate over any window of at least w between
// two samples; 0 if the drain was shorter.
func (r capDrainResult) maxWindow(w time.Duration) float64 {
	return r.window(w, func(a, b float64) bool { return b > a })
}

// minWindow is the lowest rate over any window of at least w.
func (r capDrainResult) minWindow(w time.Duration) float64 {
	return r.window(w, func(a, b float64) bool { return b < a })
}

func (r capDrainResult) window(w time.Duration, better func(a, b float64) bool) float64 {
	best, found := 0.0, false
	j := 0
	for _, s := range r.samples {
		for j < len(r.samples) && r.samples[j].at-s.at < w {
			j++
		}
		if j == len(r.samples) {
			break
		}
		e := r.samples[j]
		rate := float64(e.bytes-s.bytes) / (e.at - s.at).Seconds()
		if !found || better(best, rate) {
			best, found = rate, true
		}
	}
	return best
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// BenchmarkRateCap measures how well the byte-rate cap holds over a
// backlog drain on loopback: b.N records of 200 bytes of JSON telemetry
// in the buffer, a live sensor appending 100 a second meanwhile, the
// bytes the broker reads sampled every 100 ms. max-10s/cap is the highest
// rate over any 10 s window divided by the cap (the issue asks for at
// most 1.10), min-10s/cap the lowest (below 1: something else than the cap
// limits the drain).
//
//	go test -run '^$' -bench RateCap -benchtime 40000x ./forward
func BenchmarkRateCap(b *testing.B) {
	for _, bc := range []struct {
		compression string
		limit       int
		rtt         time.Duration
	}{
		{"none", 256 << 10, 0},
		{"zstd", 32 << 10, 0},
		{"zstd", 32 << 10, 100 * time.Millisecond},
	} {
		b.Run(fmt.Sprintf("compression=%s/cap=%dKiB/rtt=%v", bc.compression, bc.limit>>10, bc.rtt), func(b *testing.B) {
			b.ResetTimer()
			res := capDrain(b, capDrainConfig{limit: bc.limit, backlog: b.N, live: 100, compression: bc.compression, rtt: bc.rtt})
			b.StopTimer()
			if b.N > 1 && res.elapsed() < 20*time.Second {
				b.Logf("the drain took %v: raise -benchtime for 10 s windows to mean something", res.elapsed())
			}
			b.ReportMetric(res.maxWindow(10*time.Second)/float64(bc.limit), "max-10s/cap")
			b.ReportMetric(res.minWindow(10*time.Second)/float64(bc.limit), "min-10s/cap")
			b.ReportMetric(res.maxWindow(time.Second)/float64(bc.limit), "max-1s/cap")
			b.ReportMetric(res.rate()/float64(bc.limit), "all/cap")
			b.ReportMetric(res.perRecord(), "wire-B/record")
			b.ReportMetric(float64(res.records)/res.elapsed().Seconds(), "records/s")
		})
	}
}
