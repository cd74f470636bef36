//go:build chaos

package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/forward"
	"github.com/ferry-edge/ferry/internal/testenv"
)

// env is one scenario's world: a Mosquitto, a Kafka, ferry under its
// supervisor, a collector reading the data topic back and a reader of
// ferry's status records.
type env struct {
	t           *testing.T
	p           params
	dir         string
	broker      *testenv.Broker
	kafka       *testenv.Kafka
	topic       string
	statusTopic string
	bufferPath  string
	adminAddr   string
	configPath  string
	sup         *supervisor
	collector   *testenv.Collector
	status      *statusLog
	ctx         context.Context // ends with the test
}

// envOptions shape a scenario's world.
type envOptions struct {
	persistentBroker bool     // Mosquitto with persistence, for restarts
	bufferDir        string   // where buffer.db lives; default a temporary directory
	bufferKeys       []string // extra keys of ferry's buffer section, e.g. "max_bytes: 2MiB"
	kafkaDown        bool     // Kafka unreachable from the start
}

// newEnv starts Mosquitto and Kafka, writes ferry's configuration and
// prepares its supervisor; ferry is not started (env.sup.start does).
func newEnv(t *testing.T, p params, o envOptions) *env {
	t.Helper()
	if _, err := testenv.FindMosquitto(); err != nil {
		if os.Getenv(testenv.EnvRequireMosquitto) == "1" {
			t.Fatalf("%s=1 but Mosquitto is not available: %v", testenv.EnvRequireMosquitto, err)
		}
		t.Skipf("the chaos suite needs Mosquitto (the embedded mochi broker loses a crashed subscriber's messages): %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{t: t, p: p, dir: t.TempDir(), ctx: ctx}
	b, err := testenv.StartMosquittoWith(t.TempDir(), nil, testenv.MosquittoOptions{Persistence: o.persistentBroker})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close Mosquitto: %v", err)
		}
	})
	e.broker = b
	e.kafka = testenv.NewKafka(t)
	if o.kafkaDown && e.kafka.IsReal() {
		// Frozen with SIGSTOP, a real broker cannot create the
		// topics first; kfake is cut off after.
		t.Log("Kafka is a real broker: it is frozen once the topics exist")
	}
	e.topic = testenv.NewTopic(t, e.kafka)
	e.statusTopic = testenv.UniqueTopic("ferry.status")
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	if err := e.kafka.CreateTopic(cctx, e.statusTopic); err != nil {
		t.Fatal(err)
	}
	if e.collector, err = testenv.StartCollector(ctx, e.kafka.Brokers(), e.topic, e.kafka.ClientOpts()...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.collector.Close)
	if e.status, err = startStatusLog(ctx, e.kafka, e.statusTopic); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.status.close)
	if o.kafkaDown {
		e.kafka.SetReachable(false)
	}

	bufDir := o.bufferDir
	if bufDir == "" {
		bufDir = t.TempDir()
	}
	e.bufferPath = filepath.Join(bufDir, "buffer.db")
	e.adminAddr = freeAddr(t)
	e.configPath = filepath.Join(e.dir, "ferry.yaml")
	extra := ""
	for _, k := range o.bufferKeys {
		extra += "  " + k + "\n"
	}
	cfg := fmt.Sprintf(configTemplate, b.URL(), e.bufferPath, extra, e.statusTopic, e.kafka.FerryYAML(), e.topic, e.adminAddr)
	if err := os.WriteFile(e.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(ferryArgv[0], append(ferryArgv[1:], "check", "-c", e.configPath)...).CombinedOutput(); err != nil {
		t.Fatalf("ferry check: %v\n%s\n%s", err, out, cfg)
	}
	argv := append(slices.Clone(ferryArgv), "run", "-c", e.configPath)
	e.sup = newSupervisor(t, p.unit, p.restartDelay, argv, nil, filepath.Join(e.dir, "ferry.log"))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ferry's log, warnings and errors (%s=DIR keeps it whole):\n%s", envLogs, logSummary(filepath.Join(e.dir, "ferry.log"), 40))
		}
		if keep := os.Getenv(envLogs); keep != "" {
			dst := filepath.Join(keep, strings.ReplaceAll(t.Name(), "/", "_"))
			err := os.MkdirAll(dst, 0o755)
			for _, f := range []string{filepath.Join(e.dir, "ferry.log"), e.broker.LogPath} {
				if err == nil {
					err = copyFile(f, filepath.Join(dst, filepath.Base(f)))
				}
			}
			if err != nil {
				t.Errorf("keep the logs in %s: %v", dst, err)
			} else {
				t.Logf("logs kept in %s", dst)
			}
		}
	})
	return e
}

// configTemplate is ferry's configuration: the README's example with a
// status record every second and the metrics endpoint on.
const configTemplate = `gateway_id: gw-chaos
log:
  level: info
mqtt:
  url: %s
  client_id: ferry-gw-chaos
  subscriptions:
    - filter: sensors/+/telemetry
      qos: 1
buffer:
  path: %q
%sforward:
  status_topic: %s
  status_interval: 1s
  kafka:
%s  routes:
    - match: sensors/{device}/telemetry
      topic: %s
      key: "{device}"
admin:
  listen: %q
`

// startFerry starts ferry under its supervisor and waits until it is
// ready (subscribed).
func (e *env) startFerry() {
	e.t.Helper()
	e.sup.start()
	if !e.sup.waitReady(60 * time.Second) {
		e.t.Fatalf("ferry not ready within 60s")
	}
}

// Load: the suite's sensors publish QoS 1 messages, each device one after
// the other's acknowledgement.
const (
	flowDevices  = 100                    // devices of a steady flow
	flowInterval = 100 * time.Millisecond // pause between a device's messages: about 1,000 msg/s in all
)

// flow is a steady stream of about 1,000 msg/s until stop.
type flow struct {
	sensors *testenv.Sensors
	cancel  context.CancelFunc
	started time.Time
}

// startFlow starts a flow from flowDevices devices numbered from first.
func (e *env) startFlow(first int) *flow {
	ctx, cancel := context.WithCancel(e.ctx)
	s := testenv.StartSensors(ctx, testenv.SensorsConfig{
		BrokerURL: e.broker.URL(), Devices: flowDevices, PerDevice: 1 << 30, QoS: 1,
		Interval: flowInterval, FirstDevice: first,
	})
	f := &flow{sensors: s, cancel: cancel, started: time.Now()}
	e.t.Cleanup(func() { f.stop() })
	return f
}

// stop ends the flow and returns what the broker acknowledged.
func (f *flow) stop() *testenv.SensorsResult {
	f.cancel()
	res, _ := f.sensors.Wait() // the error says the context ended
	return res
}

// rate is the flow's mean rate so far, in messages per second.
func (f *flow) rate() float64 {
	return float64(f.sensors.Sent()) / time.Since(f.started).Seconds()
}

// publish sends perDevice messages from each of devices devices numbered
// from first, as fast as the broker acknowledges them, and waits.
func (e *env) publish(first, devices, perDevice int) *testenv.SensorsResult {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 3*time.Minute)
	defer cancel()
	res, err := testenv.RunSensors(ctx, testenv.SensorsConfig{
		BrokerURL: e.broker.URL(), Devices: devices, PerDevice: perDevice, QoS: 1, FirstDevice: first,
	})
	if err != nil {
		e.t.Fatalf("sensors: %v", err)
	}
	return res
}

// scrapeClient keeps no idle connections: ferry restarts under it, and no
// goroutine outlives a scenario.
var scrapeClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// scrape reads ferry's /metrics: "name" or "name{labels}" to value.
func (e *env) scrape() (map[string]float64, error) {
	resp, err := scrapeClient.Get("http://" + e.adminAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// waitMetric waits up to timeout until ferry's metric name is at least
// want, and returns the last value it read (-1 if none).
func (e *env) waitMetric(name string, want float64, timeout time.Duration) float64 {
	deadline := time.Now().Add(timeout)
	last := -1.0
	for {
		if m, err := e.scrape(); err == nil {
			if v, ok := m[name]; ok {
				last = v
				if v >= want {
					return v
				}
			}
		}
		if time.Now().After(deadline) {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// finish waits until every message the broker acknowledged (res) reached
// Kafka, or delivery settled short of that, then stops ferry as systemctl
// stop would, checks its buffer file with ferry buffer verify and fills
// in r's measurements.
func (e *env) finish(r *row, res *testenv.SensorsResult) {
	e.t.Helper()
	deadline := time.Now().Add(e.p.settle)
	quietSince, count := time.Now(), int64(-1)
	for {
		rep := e.collector.Report(res)
		if rep.Lost == 0 {
			break
		}
		if n := e.collector.Count(); n != count {
			count, quietSince = n, time.Now()
		}
		quiet := time.Since(quietSince)
		if quiet >= 5*time.Second {
			// Nothing arrives: done if ferry has nothing left to
			// send, or if it is not running.
			if m, err := e.scrape(); err == nil && m["ferry_buffer_records"] == 0 && m["ferry_kafka_in_flight_records"] == 0 {
				r.notes = append(r.notes, fmt.Sprintf("delivery settled with %d lost: ferry's buffer is empty", rep.Lost))
				break
			}
			if _, cur, _ := e.sup.history(); cur == nil && quiet >= 15*time.Second {
				r.notes = append(r.notes, fmt.Sprintf("delivery settled with %d lost: ferry is not running", rep.Lost))
				break
			}
		}
		if time.Now().After(deadline) {
			r.notes = append(r.notes, fmt.Sprintf("delivery did not settle within %v (%d lost)", e.p.settle, rep.Lost))
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	settled := time.Now()

	_, cur, gaveUp := e.sup.history()
	r.running = cur != nil && isClosed(cur.ready)
	if r.running {
		// The status record ferry sends after the last drop.
		e.status.waitNewer(settled, 5*time.Second)
	}
	r.gaveUp = gaveUp
	if end, ok := e.sup.stop(); ok {
		r.finalStop = end.String()
	}
	runs, _, _ := e.sup.history()
	r.setRuns(runs)
	rep := e.collector.Report(res)
	r.rep = rep
	r.dropped, r.deadLettered, r.corrupt = e.status.totals()
	r.verify = e.verify()
}

// verify runs ferry buffer verify on the buffer file (ferry stopped) and
// returns "ok", or what it said.
func (e *env) verify() string {
	if _, err := os.Stat(e.bufferPath); err != nil {
		return fmt.Sprintf("no buffer file: %v", err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, ferryArgv[0], append(ferryArgv[1:], "buffer", "verify", "--path", e.bufferPath)...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%v: %s", err, lastLines(string(out), 5))
	}
	return "ok"
}

// statusLog reads ferry's status records from their topic and keeps, for
// every buffer file (buffer_id), the highest count of each drop and
// dead-letter reason: the counts are since the file was created, so a
// buffer moved aside keeps what it counted.
type statusLog struct {
	cl     *kgo.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	buffers map[string]*statusCounts
	newest  time.Time // the newest record's time
	bad     int       // records that are not a status
}

type statusCounts struct {
	dropped, deadLettered map[string]uint64
	corrupt               int
}

func startStatusLog(ctx context.Context, k *testenv.Kafka, topic string) (*statusLog, error) {
	cl, err := kgo.NewClient(append(k.ClientOpts(),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond))...)
	if err != nil {
		return nil, fmt.Errorf("status reader: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &statusLog{cl: cl, cancel: cancel, done: make(chan struct{}), buffers: map[string]*statusCounts{}}
	go func() {
		defer close(s.done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			fs.EachRecord(s.add)
		}
	}()
	return s, nil
}

func (s *statusLog) add(r *kgo.Record) {
	var st forward.Status
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := json.Unmarshal(r.Value, &st); err != nil || st.BufferID == "" {
		s.bad++
		return
	}
	c := s.buffers[st.BufferID]
	if c == nil {
		c = &statusCounts{dropped: map[string]uint64{}, deadLettered: map[string]uint64{}}
		s.buffers[st.BufferID] = c
	}
	for reason, n := range st.Dropped {
		c.dropped[reason] = max(c.dropped[reason], n)
	}
	for reason, n := range st.DeadLettered {
		c.deadLettered[string(reason)] = max(c.deadLettered[string(reason)], n)
	}
	c.corrupt = max(c.corrupt, st.CorruptFiles)
	if st.Time.After(s.newest) {
		s.newest = st.Time
	}
}

// waitNewer waits up to timeout for a status record sent after t.
func (s *statusLog) waitNewer(t time.Time, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		ok := s.newest.After(t)
		s.mu.Unlock()
		if ok {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// totals sums the counts of every buffer file, leaving out zeros.
func (s *statusLog) totals() (dropped, deadLettered map[string]uint64, corrupt int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dropped, deadLettered = map[string]uint64{}, map[string]uint64{}
	for _, c := range s.buffers {
		for r, n := range c.dropped {
			if n > 0 {
				dropped[r] += n
			}
		}
		for r, n := range c.deadLettered {
			if n > 0 {
				deadLettered[r] += n
			}
		}
		corrupt = max(corrupt, c.corrupt)
	}
	return dropped, deadLettered, corrupt
}

func (s *statusLog) close() {
	s.cancel()
	<-s.done
	s.cl.Close()
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}

// freeAddr returns a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// logSummary returns the last n notable lines of ferry's log at path: the
// supervisor's start markers, warnings, errors, and the first line of a
// panic or a fatal signal (not the goroutine dump); a message repeated
// line after line is shown once with its count.
func logSummary(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	var out []string
	lastMsg, repeats := "", 0
	flush := func() {
		if repeats > 0 {
			out = append(out, fmt.Sprintf("    (the same %d more times)", repeats))
			repeats = 0
		}
	}
	for _, line := range strings.Split(string(data), "\n") {
		notable := strings.HasPrefix(line, "=== ") || strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "fatal error:") ||
			strings.HasPrefix(line, "SIG") || strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR")
		if !notable {
			continue
		}
		msg := line
		if i := strings.Index(line, " msg="); i >= 0 {
			msg = line[i:]
			if j := strings.Index(msg, " err="); j >= 0 {
				msg = msg[:j]
			}
		}
		if msg == lastMsg && !strings.HasPrefix(line, "=== ") {
			repeats++
			continue
		}
		flush()
		lastMsg = msg
		out = append(out, line)
	}
	flush()
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return strings.Join(out, "\n")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// sum adds the counts of the given reasons, or of all if none is given.
func sum(m map[string]uint64, reasons ...string) uint64 {
	var n uint64
	if len(reasons) == 0 {
		reasons = slices.Collect(maps.Keys(m))
	}
	for _, r := range reasons {
		n += m[r]
	}
	return n
}
