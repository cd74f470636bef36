package agent

import (
	"context"
	cryptorand "crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/config"
	"github.com/ferry-edge/ferry/forward"
	"github.com/ferry-edge/ferry/internal/testenv"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Records Kafka refuses for good (here: larger than the topic's
// max.message.bytes, so refused by the broker itself, on kfake and on a
// real broker alike) are dead-lettered; every other message arrives in
// per-device order and exactly once, and the buffer drains.
func TestPoisonRecordsAreDeadLetteredInOrder(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, mochiStalls)
	kafka := testenv.NewKafka(t)
	topic := testenv.UniqueTopic("poison")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := kafka.CreateTopicWith(ctx, topic, map[string]string{"max.message.bytes": "20000"}); err != nil {
		t.Fatal(err)
	}
	cfg := loadConfig(t, broker, kafka, topic)
	a, stopAgent := startAgent(t, cfg, Options{})
	collector := startCollector(t, kafka, topic)

	sensors := testenv.StartSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 8, PerDevice: 500, QoS: 1})
	waitFor(t, "a third of the messages", 30*time.Second, func() bool { return sensors.Sent() > 8*500/3 })
	poison := make([]byte, 50_000) // random: no codec shrinks it under the limit
	if _, err := cryptorand.Read(poison); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := testenv.Publish(ctx, broker.URL(), fmt.Sprintf("sensors/poison-%d/telemetry", i), 1, poison); err != nil {
			t.Fatal(err)
		}
	}
	deliveredOnceThenDrained(t, ctx, a, sensors, collector)
	st := a.Stats()
	if n := st.Buffer.DeadLettered[forward.ReasonTooLarge]; n != 3 {
		t.Fatalf("dead-lettered %v, want 3 for %s", st.Buffer.DeadLettered, forward.ReasonTooLarge)
	}
	t.Logf("forwarder: %d chunks for %d records", st.Forward.Chunks, st.Forward.Delivered)
	stopAgent()
}

// A topic level that makes an invalid Kafka topic name (a space; an empty
// level) dead-letters that message before it is produced, at once, and the
// rest flows; before, it was retried for ever and held everything back.
func TestInvalidTopicFromCaptureIsDeadLettered(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, mochiStalls)
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	cfg := loadConfig(t, broker, kafka, topic)
	cfg.MQTT[0].Subscriptions = append(cfg.MQTT[0].Subscriptions, cfg.MQTT[0].Subscriptions[0])
	cfg.MQTT[0].Subscriptions[1].Filter = "odd/#"
	odd := cfg.Forward.Routes[0]
	odd.Match, odd.Topic = "odd/{device}", "{device}"
	cfg.Forward.Routes = append(cfg.Forward.Routes, odd)
	a, stopAgent := startAgent(t, cfg, Options{})
	collector := startCollector(t, kafka, topic)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	sensors := testenv.StartSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 4, PerDevice: 300, QoS: 1})
	for _, mqttTopic := range []string{"odd/bad dev", "odd/"} {
		if err := testenv.Publish(ctx, broker.URL(), mqttTopic, 1, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	res, err := sensors.Wait()
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	if rep := collector.WaitFor(wctx, res); !rep.OK() || rep.Duplicates != 0 {
		t.Fatalf("not delivered intact and once: %s", rep)
	}
	waitFor(t, "the buffer to drain", 30*time.Second, func() bool { return a.Stats().Buffer.Records == 0 })
	st := a.Stats()
	if n := st.Buffer.DeadLettered[forward.ReasonInvalidTopic]; n != 2 {
		t.Fatalf("dead-lettered %v, want 2 for %s", st.Buffer.DeadLettered, forward.ReasonInvalidTopic)
	}
	if strings.Contains(st.Forward.LastError, "topic") {
		t.Errorf("forwarding reports %q after the bad records were set aside", st.Forward.LastError)
	}
	stopAgent()
}

// A record Kafka refuses as INVALID_RECORD (here: without a key, to a
// compacted topic) is dead-lettered, reason invalid_record, and every other
// message arrives in per-device order and exactly once. kfake does not
// check keys on compacted topics: this runs on the real broker (CI runs
// this package against one, see scripts/kafka-test-broker).
func TestInvalidRecordIsDeadLetteredInOrder(t *testing.T) {
	kafka := testenv.NewKafka(t)
	if !kafka.IsReal() {
		t.Skip("kfake takes a record without a key on a compacted topic; needs the real broker (" + testenv.EnvKafka + ")")
	}
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, mochiStalls)
	topic := testenv.UniqueTopic("compacted")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := kafka.CreateTopicWith(ctx, topic, map[string]string{"cleanup.policy": "compact"}); err != nil {
		t.Fatal(err)
	}
	cfg := loadConfig(t, broker, kafka, topic)
	nokey := cfg.Forward.Routes[0]
	nokey.Match, nokey.Key = "sensors/nokey/telemetry", "" // before the keyed route
	cfg.Forward.Routes = append([]config.Route{nokey}, cfg.Forward.Routes...)
	a, stopAgent := startAgent(t, cfg, Options{})
	collector := startCollector(t, kafka, topic)

	sensors := testenv.StartSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 8, PerDevice: 500, QoS: 1})
	waitFor(t, "a third of the messages", 30*time.Second, func() bool { return sensors.Sent() > 8*500/3 })
	for range 3 {
		if err := testenv.Publish(ctx, broker.URL(), "sensors/nokey/telemetry", 1, []byte(`{"no":"key"}`)); err != nil {
			t.Fatal(err)
		}
	}
	deliveredOnceThenDrained(t, ctx, a, sensors, collector)
	if n := a.Stats().Buffer.DeadLettered[forward.ReasonInvalidRecord]; n != 3 {
		t.Fatalf("dead-lettered %v, want 3 for %s", a.Stats().Buffer.DeadLettered, forward.ReasonInvalidRecord)
	}
	stopAgent()
}

// Topics Kafka refuses to ferry's principal are dead-lettered, reason
// topic_authorization_failed, whichever way the refusal comes: in the
// produce responses (an ACL denies writing, describing is allowed) or in
// the metadata (an ACL denies everything). Every other message arrives in
// per-device order and exactly once, and the buffer drains. kfake's
// refusals are covered in package forward; this is the real broker's ACLs
// on its SASL listener (CI: FERRY_TEST_KAFKA_LISTENER=sasl).
func TestTopicAuthorizationIsDeadLettered(t *testing.T) {
	kafka := testenv.NewKafka(t)
	if kafka.Listener() != "sasl" {
		t.Skipf("needs the real broker's ACLs for its SCRAM user (%s=sasl); this run uses %s", testenv.EnvKafkaListener, kafka)
	}
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, mochiStalls)
	topic := testenv.NewTopic(t, kafka)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	denied := map[string]kmsg.ACLOperation{
		"write": kmsg.ACLOperationWrite, // refused in the produce responses
		"all":   kmsg.ACLOperationAll,   // refused in the metadata
	}
	cfg := loadConfig(t, broker, kafka, topic)
	cfg.MQTT[0].Subscriptions = append(cfg.MQTT[0].Subscriptions, cfg.MQTT[0].Subscriptions[0])
	cfg.MQTT[0].Subscriptions[1].Filter = "denied/#"
	for name, op := range denied {
		kt := testenv.UniqueTopic("denied-" + name)
		if err := kafka.CreateTopic(ctx, kt); err != nil {
			t.Fatal(err)
		}
		if err := kafka.DenyTopic(ctx, kt, op); err != nil {
			t.Fatal(err)
		}
		r := cfg.Forward.Routes[0]
		r.Match, r.Topic, r.Key = "denied/"+name, kt, ""
		cfg.Forward.Routes = append(cfg.Forward.Routes, r)
	}
	a, stopAgent := startAgent(t, cfg, Options{})
	collector := startCollector(t, kafka, topic)

	const perTopic = 20
	sensors := testenv.StartSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 4, PerDevice: 500, QoS: 1})
	waitFor(t, "a third of the messages", 30*time.Second, func() bool { return sensors.Sent() > 4*500/3 })
	for i := range perTopic {
		for name := range denied {
			if err := testenv.Publish(ctx, broker.URL(), "denied/"+name, 1, fmt.Appendf(nil, `{"n":%d}`, i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	deliveredOnceThenDrained(t, ctx, a, sensors, collector)
	st := a.Stats()
	if n := st.Buffer.DeadLettered[forward.ReasonTopicAuthorization]; n != uint64(len(denied)*perTopic) {
		t.Fatalf("dead-lettered %v, want %d for %s", st.Buffer.DeadLettered, len(denied)*perTopic, forward.ReasonTopicAuthorization)
	}
	if st.Forward.LastError != "" {
		t.Errorf("forwarding reports %q after the refused records were set aside", st.Forward.LastError)
	}
	t.Logf("forwarder: %d chunks, %d delivered", st.Forward.Chunks, st.Forward.Delivered)
	stopAgent()
}

// deliveredOnceThenDrained waits for the sensors to finish and for
// everything the broker acknowledged to arrive intact, in per-device order
// and once, then for the buffer to drain (dead letters leave it too).
func deliveredOnceThenDrained(t *testing.T, ctx context.Context, a *Agent, sensors *testenv.Sensors, collector *testenv.Collector) {
	t.Helper()
	res, err := sensors.Wait()
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	rep := collector.WaitFor(wctx, res)
	t.Logf("report: %s", rep)
	if !rep.OK() || rep.Duplicates != 0 {
		t.Fatalf("not delivered intact and once: %s", rep)
	}
	waitFor(t, "the buffer to drain", 60*time.Second, func() bool { return a.Stats().Buffer.Records == 0 })
}
