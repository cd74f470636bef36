package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/config"
	"github.com/ferry-edge/ferry/forward"
	"github.com/ferry-edge/ferry/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// kfake and paho leave short-lived goroutines winding down after Close.
		goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*Cluster).run"),
	)
}

const devices, perDevice = 20, 500

// testLogger sends the agent's log to the test log, at debug level.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// loadConfig writes and loads a ferry config for the test's broker, Kafka
// and topic; bufferKeys are extra lines for the buffer section.
func loadConfig(t testing.TB, broker *testenv.Broker, kafka *testenv.Kafka, topic string, bufferKeys ...string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "ferry.yaml")
	text := testenv.FerryConfig(broker, kafka, topic, filepath.Join(dir, "buffer.db"))
	for _, k := range bufferKeys {
		text = strings.Replace(text, "buffer:\n", "buffer:\n  "+k+"\n", 1)
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const mochiStalls = "mochi-mqtt stalls under sustained QoS 1 load (with many messages queued for one subscriber it slows to a crawl, or holds them until the subscriber's next packet)"

func TestEndToEnd(t *testing.T) { runEndToEnd(t, false, "delayed") }

// The outage test runs in both buffer.sync modes: acknowledged on Kafka's
// acknowledgement or the fsync (delayed), and on the fsync only (always).
func TestEndToEndKafkaOutage(t *testing.T) {
	for _, mode := range []string{"delayed", "always"} {
		t.Run("sync="+mode, func(t *testing.T) { runEndToEnd(t, true, mode) })
	}
}

// runEndToEnd publishes 20 devices x 500 QoS 1 messages through a real
// broker and ferry into Kafka and checks every acknowledged message arrived,
// in per-device order; with outage, Kafka is unreachable for seconds in the
// middle of the stream. sync is buffer.sync.
func runEndToEnd(t *testing.T, outage bool, sync string) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, mochiStalls)
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	cfg := loadConfig(t, broker, kafka, topic, "sync: "+sync)

	a, stopAgent := startAgent(t, cfg, Options{Forward: func(fc *forward.Config) { fc.ShutdownTimeout = 2 * time.Second }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	collector := startCollector(t, kafka, topic)
	sensors := testenv.StartSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: devices, PerDevice: perDevice, QoS: 1})

	if outage {
		waitFor(t, "a third of the messages", 30*time.Second, func() bool { return sensors.Sent() > devices*perDevice/3 })
		kafka.SetReachable(false)
		before := a.Stats()
		time.Sleep(4 * time.Second)
		// A reset connection shows at once; a silent link once records
		// have waited StallTimeout (5s) for an acknowledgement.
		waitFor(t, "the forwarder to report Kafka unreachable", 10*time.Second, func() bool { return a.Stats().Forward.LastError != "" })
		during := a.Stats()
		if during.Buffer.Records <= before.Buffer.Records {
			t.Errorf("buffer did not grow while Kafka was unreachable: %d -> %d records", before.Buffer.Records, during.Buffer.Records)
		}
		t.Logf("outage: buffer %d -> %d records; forward error %q", before.Buffer.Records, during.Buffer.Records, during.Forward.LastError)
		kafka.SetReachable(true)
	}

	res, err := sensors.Wait()
	if err != nil {
		t.Fatalf("sensors: %v", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 90*time.Second)
	defer wcancel()
	rep := collector.WaitFor(wctx, res)
	t.Logf("report: %s", rep)
	if rep.Sent != devices*perDevice {
		t.Errorf("sensors got %d acknowledgements, want %d", rep.Sent, devices*perDevice)
	}
	if !rep.OK() {
		t.Fatalf("not delivered intact: %s", rep)
	}
	// Without a crash, not even an outage makes duplicates: the producer
	// retries what it holds, and its retries land once.
	if rep.Duplicates != 0 {
		t.Errorf("%d duplicates without a crash", rep.Duplicates)
	}

	// Records carry the key, headers and receive time ferry promises.
	recs := collector.Records()
	r := recs[len(recs)/2]
	if string(r.Key) != r.Msg.Device {
		t.Errorf("key %q, want device %q", r.Key, r.Msg.Device)
	}
	headers := map[string]string{}
	for _, h := range r.Headers {
		headers[h.Key] = string(h.Value)
	}
	if want := "sensors/" + r.Msg.Device + "/telemetry"; headers[forward.HeaderMQTTTopic] != want {
		t.Errorf("header %s = %q, want %q", forward.HeaderMQTTTopic, headers[forward.HeaderMQTTTopic], want)
	}
	if headers[forward.HeaderGateway] != "gw-test" {
		t.Errorf("header %s = %q, want gw-test", forward.HeaderGateway, headers[forward.HeaderGateway])
	}
	sent := time.Unix(0, r.Msg.SentAt).Truncate(time.Millisecond) // Kafka keeps milliseconds
	if d := r.Timestamp.Sub(sent); d < 0 || d > 10*time.Second {
		t.Errorf("record timestamp %v is %v after the sensor sent it; want the receive time", r.Timestamp, d)
	}

	testenv.CrossCheckKcat(t, kafka, topic, recs)

	stopAgent()
	if st := a.Stats(); st.Buffer.Records != 0 {
		t.Errorf("buffer holds %d records after everything was delivered", st.Buffer.Records)
	}
}

// QoS 2 end to end: sensors publish at QoS 2 to Mosquitto, ferry
// subscribes at QoS 2 (PUBREC once the record is durable, then
// PUBREL/PUBCOMP), and every message reaches Kafka once, in order.
func TestEndToEndQoS2(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, mochiStalls)
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	cfg := loadConfig(t, broker, kafka, topic)
	for i := range cfg.MQTT[0].Subscriptions {
		cfg.MQTT[0].Subscriptions[i].QoS = 2
	}
	a, stopAgent := startAgent(t, cfg, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	collector := startCollector(t, kafka, topic)
	res, err := testenv.RunSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 4, PerDevice: 250, QoS: 2})
	if err != nil {
		t.Fatalf("sensors: %v", err)
	}
	rep := collector.WaitFor(ctx, res)
	t.Logf("report: %s", rep)
	if !rep.OK() || rep.Sent != 1000 || rep.Duplicates != 0 {
		t.Fatalf("not delivered intact and once: %s", rep)
	}
	waitFor(t, "every message acknowledged", 10*time.Second, func() bool {
		st := a.Stats().MQTT
		return st.Acknowledged == st.Received && st.Received == 1000
	})
	stopAgent()
}

// A route to a topic that does not exist (and auto-creation off, ferry's
// default) is an error in the forwarder's status and the log; the records
// wait in the buffer and go out, in order, once the topic exists.
func TestMissingTopicWaitsInBuffer(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, mochiStalls)
	kafka := testenv.NewKafka(t)
	topic := testenv.UniqueTopic("missing")
	cfg := loadConfig(t, broker, kafka, topic)
	a, stopAgent := startAgent(t, cfg, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	res, err := testenv.RunSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 2, PerDevice: 50, QoS: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "an unknown-topic error", 60*time.Second, func() bool {
		return strings.Contains(a.Stats().Forward.LastError, "UNKNOWN_TOPIC")
	})
	waitFor(t, "all 100 records to be buffered", 30*time.Second, func() bool { return a.Stats().Buffer.Records == 100 })
	st := a.Stats()
	t.Logf("while the topic is missing: %d records buffered; error %q", st.Buffer.Records, st.Forward.LastError)
	if st.Buffer.Records != 100 || st.Forward.Delivered != 0 {
		t.Fatalf("buffer holds %d records and %d were delivered; want all 100 waiting", st.Buffer.Records, st.Forward.Delivered)
	}

	if err := kafka.CreateTopic(ctx, topic); err != nil {
		t.Fatal(err)
	}
	collector := startCollector(t, kafka, topic)
	wctx, wcancel := context.WithTimeout(ctx, 90*time.Second)
	defer wcancel()
	if rep := collector.WaitFor(wctx, res); !rep.OK() || rep.Sent != 100 {
		t.Fatalf("after the topic was created: %s", rep)
	}
	stopAgent()
}

// With a wrong SASL password ferry says so and keeps the records. Only on a
// real broker's SASL listener.
func TestWrongKafkaPasswordIsReported(t *testing.T) {
	kafka := testenv.NewKafka(t)
	if kafka.Listener() != "sasl" {
		t.Skipf("needs a SASL listener (%s=sasl); this run uses %s", testenv.EnvKafkaListener, kafka.Listener())
	}
	broker := testenv.NewBroker(t)
	topic := testenv.NewTopic(t, kafka)
	t.Setenv("FERRY_TEST_KAFKA_SASL_PASSWORD", "not-the-password") // the config reads it from here
	cfg := loadConfig(t, broker, kafka, topic)
	a, stopAgent := startAgent(t, cfg, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := testenv.RunSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 1, PerDevice: 10, QoS: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "an authentication error", 60*time.Second, func() bool { return a.Stats().Forward.LastError != "" })
	st := a.Stats()
	t.Logf("forward error: %q", st.Forward.LastError)
	if strings.Contains(st.Forward.LastError, "not-the-password") {
		t.Fatal("the error shows the password")
	}
	if st.Buffer.Records != 10 || st.Forward.Delivered != 0 {
		t.Fatalf("%d records buffered, %d delivered; want 10 waiting", st.Buffer.Records, st.Forward.Delivered)
	}
	stopAgent()
}

// startCollector consumes topic from its start until the test ends.
func startCollector(t *testing.T, kafka *testenv.Kafka, topic string) *testenv.Collector {
	t.Helper()
	c, err := testenv.StartCollector(context.Background(), kafka.Brokers(), topic, kafka.ClientOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// startAgent builds an agent from cfg and runs it with its own context,
// once it has subscribed; the returned function stops it and checks that
// Run returned nil. It also runs at cleanup, so a failing test does not
// leave ferry running.
func startAgent(t *testing.T, cfg *config.Config, opts Options) (a *Agent, stop func()) {
	t.Helper()
	a, err := New(cfg, testLogger(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	waitFor(t, "ferry to subscribe", 15*time.Second, func() bool { return a.Stats().MQTT.Subscribed })
	return a, stop
}

// With when_full: block and Kafka unreachable, the buffer stops at
// max_bytes, ferry stops acknowledging, the broker holds the rest, and when
// Kafka returns everything arrives: backpressure, no loss, no drop.
func TestBlockWhenFullLosesNothing(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, mochiStalls)
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	cfg := loadConfig(t, broker, kafka, topic, "when_full: block")
	cfg.Buffer.MaxBytes = 16 << 10 // to fill fast: below the 1MiB a configuration file may set
	a, _ := startAgent(t, cfg, Options{})
	kafka.SetReachable(false)

	ctx := context.Background()
	res, err := testenv.RunSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 4, PerDevice: 250, QoS: 1})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	st := a.Stats()
	t.Logf("Kafka down, 1000 published: buffer %d records, %d bytes (%d, %d in memory); %d received, %d acknowledged",
		st.Buffer.Records, st.Buffer.Bytes, st.Buffer.TailRecords, st.Buffer.TailBytes, st.MQTT.Received, st.MQTT.Stored)
	if disk := st.Buffer.Bytes - st.Buffer.TailBytes; disk > 16<<10+1024 {
		t.Errorf("buffer holds %d bytes on disk, max_bytes is 16KiB", disk)
	}
	if st.MQTT.Stored >= 1000 {
		t.Errorf("all %d messages acknowledged: block did not hold anything back", st.MQTT.Stored)
	}
	kafka.SetReachable(true)

	collector := startCollector(t, kafka, topic)
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	rep := collector.WaitFor(wctx, res)
	t.Logf("report: %s", rep)
	if !rep.OK() || rep.Sent != 1000 {
		t.Fatalf("with block: %s", rep)
	}
	if d := a.Stats().Buffer.Dropped; d[buffer.DropMaxBytes] != 0 {
		t.Fatalf("block dropped %d records", d[buffer.DropMaxBytes])
	}
}

// With when_full: drop_oldest and Kafka unreachable, the oldest records are
// dropped at max_bytes; exactly the dropped ones are missing downstream, and
// the status record tells the data centre how many.
func TestDropOldestIsCountedAndReported(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, mochiStalls)
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	cfg := loadConfig(t, broker, kafka, topic)
	cfg.Buffer.MaxBytes = 16 << 10 // to fill fast: below the 1MiB a configuration file may set
	cfg.Forward.StatusTopic = testenv.UniqueTopic("status")
	// Records already handed to the producer when the buffer drops them may
	// still arrive; a small window bounds how many.
	const window = 50
	cfg.Forward.Kafka.MaxBufferedRecords = window
	if err := kafka.CreateTopic(context.Background(), cfg.Forward.StatusTopic); err != nil {
		t.Fatal(err)
	}
	a, _ := startAgent(t, cfg, Options{})
	kafka.SetReachable(false)

	ctx := context.Background()
	res, err := testenv.RunSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 4, PerDevice: 250, QoS: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all 1000 messages stored", 30*time.Second, func() bool { return a.Stats().MQTT.Stored >= 1000 })
	dropped := a.Stats().Buffer.Dropped[buffer.DropMaxBytes]
	if dropped == 0 {
		t.Fatal("nothing was dropped; the test needs drops")
	}
	kafka.SetReachable(true)

	collector := startCollector(t, kafka, topic)
	waitFor(t, "the rest to arrive", 90*time.Second, func() bool { return collector.Count() >= int64(1000-dropped) })
	waitFor(t, "the buffer to drain", 30*time.Second, func() bool { return a.Stats().Buffer.Records == 0 })
	time.Sleep(time.Second)
	rep := collector.Report(res)
	t.Logf("dropped %d; report: %s", dropped, rep)
	// Nothing is lost that was not counted; at most the window's worth of
	// counted records arrived anyway.
	if lost := uint64(rep.Lost); lost > dropped || lost+window < dropped || rep.OutOfOrder != 0 {
		t.Fatalf("lost %d downstream, buffer counted %d dropped, window %d (out of order %d)", rep.Lost, dropped, window, rep.OutOfOrder)
	}

	cl, err := kgo.NewClient(append(kafka.ClientOpts(), kgo.ConsumeTopics(cfg.Forward.StatusTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		fs := cl.PollFetches(pctx)
		cancel()
		var reported uint64
		fs.EachRecord(func(r *kgo.Record) {
			var s forward.Status
			if json.Unmarshal(r.Value, &s) == nil && s.GatewayID == "gw-test" {
				reported = max(reported, s.Dropped[buffer.DropMaxBytes])
			}
		})
		if reported == dropped {
			t.Logf("status record reports %d dropped for max_bytes", reported)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no status record reported the %d drops (last seen %d)", dropped, reported)
		}
	}
}
