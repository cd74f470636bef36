package mqtt

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/testenv"
)

// procCounters are what this process has spent so far: CPU time, context
// switches, read and write system calls (/proc/self/io syscr and syscw,
// sockets included; -1 where unavailable) and heap allocations.
type procCounters struct {
	cpu           time.Duration
	csw, ivcsw    int64 // voluntary and involuntary context switches
	reads, writes int64
	mallocs       uint64
}

func readCounters(tb testing.TB) procCounters {
	tb.Helper()
	var c procCounters
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	c.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	c.csw, c.ivcsw = int64(ru.Nvcsw), int64(ru.Nivcsw)
	c.reads, c.writes = -1, -1
	if b, err := os.ReadFile("/proc/self/io"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			k, v, _ := strings.Cut(line, ": ")
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case "syscr":
				c.reads = n
			case "syscw":
				c.writes = n
			}
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	c.mallocs = ms.Mallocs
	return c
}

// report adds per-message metrics: what the process spent between from and
// to for n messages.
func report(b *testing.B, from, to procCounters, n int, elapsed time.Duration) {
	per := func(d int64) float64 { return float64(d) / float64(n) }
	b.ReportMetric(float64(n)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64((to.cpu-from.cpu).Microseconds())/float64(n), "cpu-µs/msg")
	b.ReportMetric(per(to.csw-from.csw), "ctxsw/msg")
	b.ReportMetric(per(to.ivcsw-from.ivcsw), "preempted/msg")
	b.ReportMetric(per(int64(to.mallocs-from.mallocs)), "allocs/msg")
	if from.reads >= 0 {
		b.ReportMetric(per(to.reads-from.reads), "reads/msg")
		b.ReportMetric(per(to.writes-from.writes), "writes/msg")
	}
}

// commitSink stands in for the buffer without a disk: Append queues, and
// its own goroutine calls done for everything queued, in order, as the
// buffer's committer does after a commit. It closes reached once target
// records are done.
type commitSink struct {
	mu      sync.Mutex
	queue   []func(uint64, error)
	seq     uint64
	target  uint64
	reached chan struct{}
	wake    chan struct{}
	quit    chan struct{}
	exited  chan struct{}
}

func newCommitSink(target int) *commitSink {
	s := &commitSink{
		target:  uint64(target),
		reached: make(chan struct{}),
		wake:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		exited:  make(chan struct{}),
	}
	go s.commit()
	return s
}

func (s *commitSink) Append(_ *buffer.Record, done func(uint64, error)) error {
	s.mu.Lock()
	s.queue = append(s.queue, done)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

func (s *commitSink) commit() {
	defer close(s.exited)
	var batch []func(uint64, error)
	for {
		select {
		case <-s.wake:
		case <-s.quit:
			return
		}
		s.mu.Lock()
		batch, s.queue = s.queue, batch[:0]
		s.mu.Unlock()
		for _, done := range batch {
			s.seq++
			done(s.seq, nil)
			if s.seq == s.target {
				close(s.reached)
			}
		}
		clear(batch)
	}
}

func (s *commitSink) close() { close(s.quit); <-s.exited }

// subscriber is what a benchmark measures: it subscribes to bench/# at
// qos and closes the returned channel once n messages were taken.
type subscriber func(b *testing.B, brokerURL string, qos QoS, n int) (reached <-chan struct{}, stop func())

// ingestSubscriber is ingest with a sink without a disk (commitSink).
func ingestSubscriber(b *testing.B, brokerURL string, qos QoS, n int) (<-chan struct{}, func()) {
	sink := newCommitSink(n)
	u, _ := url.Parse(brokerURL)
	in, err := New(Config{
		URL: u, ClientID: "ferry-bench", SessionExpiry: time.Hour,
		Subscriptions: []Subscription{{Filter: "bench/#", QoS: qos}},
	}, sink)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- in.Run(ctx) }()
	for !in.Stats().Subscribed {
		time.Sleep(10 * time.Millisecond)
	}
	return sink.reached, func() {
		cancel()
		if err := <-runDone; err != nil {
			b.Error(err)
		}
		sink.close()
	}
}

// plainSubscriber is the baseline: a paho client that acknowledges each
// message as soon as its handler returns, keeping nothing.
func plainSubscriber(b *testing.B, brokerURL string, qos QoS, n int) (<-chan struct{}, func()) {
	u, _ := url.Parse(brokerURL)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		b.Fatal(err)
	}
	reached := make(chan struct{})
	var got int
	c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: "plain-bench", OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(paho.PublishReceived) (bool, error) {
			if got++; got == n {
				close(reached)
			}
			return true, nil
		}}})
	rm := uint16(1000)
	if _, err := c.Connect(context.Background(), &paho.Connect{ClientID: "plain-bench", CleanStart: true, KeepAlive: 30,
		Properties: &paho.ConnectProperties{ReceiveMaximum: &rm}}); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "bench/#", QoS: byte(qos)}}}); err != nil {
		b.Fatal(err)
	}
	return reached, func() { c.Disconnect(&paho.Disconnect{}) }
}

// benchIngest has mosquitto_pub (a process of its own, so that its work
// is not counted) publish b.N messages of 64 bytes at qos to Mosquitto,
// rate a second (0: as fast as it goes, up to 1000 in flight), and
// reports what this process (sub: ingest with a sink without a disk, or
// the plain subscriber) spent per message until every message was taken.
func benchIngest(b *testing.B, rate int, qos QoS, sub subscriber) {
	broker := testenv.NewBroker(b)
	testenv.RequireMosquitto(b, broker, "the broker must be a process of its own to count what ingest spends")
	pub, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		b.Skip("needs mosquitto_pub (Debian: mosquitto-clients)")
	}
	reached, stop := sub(b, broker.URL(), qos, b.N)
	defer stop()

	payload := fmt.Sprintf(`{"device":"dev-01","seq":0,"t":21.5,"pad":"%s"}`, strings.Repeat("x", 13))
	args := []string{"-h", "127.0.0.1", "-p", broker.Addr[strings.LastIndexByte(broker.Addr, ':')+1:],
		"-V", "mqttv5", "-q", strconv.Itoa(int(qos)), "-i", "ferry-bench-pub", "-t", "bench/dev-01/telemetry", "-l", "-M", "1000"}
	cmd := exec.Command(pub, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	var pacer *exec.Cmd
	if rate > 0 {
		// perl writes the lines evenly spaced, from a process of its own.
		if _, err := exec.LookPath("perl"); err != nil {
			b.Skip("needs perl to pace the publisher")
		}
		pacer = exec.Command("perl", "-MTime::HiRes=time,sleep", "-e", pacerScript, strconv.Itoa(b.N), strconv.Itoa(rate), payload)
		r, w, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		pacer.Stdout, cmd.Stdin = w, r
	} else {
		cmd.Stdin = bytes.NewReader(bytes.Repeat([]byte(payload+"\n"), b.N))
	}

	b.ResetTimer()
	from := readCounters(b)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	if pacer != nil {
		if err := pacer.Start(); err != nil {
			b.Fatal(err)
		}
		// The children have the pipe. Its ends here would sit in this
		// process's network poller, woken by every line (and mosquitto_pub
		// sees EOF only once perl's end is the last one).
		pacer.Stdout.(*os.File).Close()
		cmd.Stdin.(*os.File).Close()
	}
	select {
	case <-reached:
	case <-time.After(time.Duration(b.N)*time.Millisecond + time.Minute):
		b.Fatalf("not all of %d messages taken", b.N)
	}
	elapsed := time.Since(start)
	time.Sleep(50 * time.Millisecond) // the last acknowledgements go out
	to := readCounters(b)
	b.StopTimer()
	if pacer != nil {
		if err := pacer.Wait(); err != nil {
			b.Fatalf("pacer: %v", err)
		}
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("mosquitto_pub: %v\n%s", err, out.Bytes())
	}
	report(b, from, to, b.N, elapsed)
}

// pacerScript prints its third argument as a line, as many times as its
// first argument says, at the rate (lines a second) its second one says.
const pacerScript = `$| = 1; my ($n, $rate, $line) = @ARGV; my $t0 = time;
for my $i (1 .. $n) { my $d = $t0 + $i / $rate - time; sleep($d) if $d > 0; print "$line\n" }`

// BenchmarkIngest measures what ingest spends per message as fast as
// Mosquitto delivers and at 1,000 messages a second, at QoS 1; and, flat
// out at QoS 0, 1 and 2, ingest next to a plain subscriber that
// acknowledges each message at once and keeps nothing:
//
//	go test -run '^$' -bench Ingest -benchtime 20000x ./mqtt
//
// With QoS 0 the publisher does not wait for the broker, so the rate is
// the subscriber's (or the broker's) with the broker queueing the rest.
func BenchmarkIngest(b *testing.B) {
	b.Run("flat", func(b *testing.B) { benchIngest(b, 0, AtLeastOnce, ingestSubscriber) })
	b.Run("1000/s", func(b *testing.B) { benchIngest(b, 1000, AtLeastOnce, ingestSubscriber) })
	for _, qos := range []QoS{AtMostOnce, AtLeastOnce, ExactlyOnce} {
		b.Run(fmt.Sprintf("qos%d/ingest", qos), func(b *testing.B) { benchIngest(b, 0, qos, ingestSubscriber) })
		b.Run(fmt.Sprintf("qos%d/plain", qos), func(b *testing.B) { benchIngest(b, 0, qos, plainSubscriber) })
	}
}

// BenchmarkIdle measures the CPU a connected ingest spends without
// messages; each op is 10ms of waiting.
//
//	go test -run '^$' -bench Idle -benchtime 500x ./mqtt
func BenchmarkIdle(b *testing.B) {
	broker := testenv.NewBroker(b)
	u, _ := url.Parse(broker.URL())
	in, err := New(Config{
		URL: u, ClientID: "ferry-bench", SessionExpiry: time.Hour,
		Subscriptions: []Subscription{{Filter: "bench/#", QoS: 1}},
	}, idleSink{})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- in.Run(ctx) }()
	for !in.Stats().Subscribed {
		time.Sleep(10 * time.Millisecond)
	}
	b.ResetTimer()
	from := readCounters(b)
	start := time.Now()
	time.Sleep(time.Duration(b.N) * 10 * time.Millisecond)
	elapsed := time.Since(start)
	to := readCounters(b)
	b.StopTimer()
	b.ReportMetric(100*float64(to.cpu-from.cpu)/float64(elapsed), "%core")
	b.ReportMetric(float64(to.csw-from.csw)/elapsed.Seconds(), "ctxsw/s")
	cancel()
	if err := <-runDone; err != nil {
		b.Fatal(err)
	}
}

// idleSink fails the benchmark's assumption loudly if a message arrives.
type idleSink struct{}

func (idleSink) Append(*buffer.Record, func(uint64, error)) error {
	return fmt.Errorf("idle benchmark received a message")
}
