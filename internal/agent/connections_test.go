package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/config"
	"github.com/ferry-edge/ferry/internal/testenv"
)

// Two brokers, one buffer: messages from both arrive in Kafka, each
// connection is reported on its own, and one broker going away leaves
// ferry ready with the other.
func TestSeveralBrokersFeedOneBuffer(t *testing.T) {
	a1, b2 := testenv.NewBroker(t), testenv.NewBroker(t)
	testenv.RequireMosquitto(t, a1, mochiStalls)
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	dir := t.TempDir()
	path := filepath.Join(dir, "ferry.yaml")
	text := fmt.Sprintf(`gateway_id: gw-test
mqtt:
  - name: line-a
    url: %s
    subscriptions:
      - filter: sensors/+/telemetry
  - name: line-b
    url: %s
    subscriptions:
      - filter: sensors/+/telemetry
buffer:
  path: %q
forward:
  kafka:
%s  routes:
    - match: sensors/{device}/telemetry
      topic: %s
      key: "{device}"
`, a1.URL(), b2.URL(), filepath.Join(dir, "buffer.db"), kafka.FerryYAML(), topic)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	a, stop := startAgent(t, cfg, Options{})
	defer stop()
	collector := startCollector(t, kafka, topic)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Devices 0-3 publish to the first broker, 10-13 to the second.
	s1 := testenv.StartSensors(ctx, testenv.SensorsConfig{BrokerURL: a1.URL(), Devices: 4, PerDevice: 200, QoS: 1})
	s2 := testenv.StartSensors(ctx, testenv.SensorsConfig{BrokerURL: b2.URL(), Devices: 4, PerDevice: 200, QoS: 1, FirstDevice: 10})
	res, err := s1.Wait()
	if err != nil {
		t.Fatal(err)
	}
	res2, err := s2.Wait()
	if err != nil {
		t.Fatal(err)
	}
	res.Merge(res2)
	rep := collector.WaitFor(ctx, res)
	if !rep.OK() || rep.Duplicates != 0 {
		t.Fatalf("not delivered intact and once: %s", rep)
	}
	st := a.Stats()
	if len(st.Connections) != 2 || st.Connections[0].Name != "line-a" || st.Connections[1].Name != "line-b" ||
		st.Connections[0].Received != 800 || st.Connections[1].Received != 800 || st.MQTT.Received != 1600 {
		t.Fatalf("connections %+v, total received %d", st.Connections, st.MQTT.Received)
	}
	if snap := a.Snapshot(); len(snap.MQTT) != 2 || !snap.MQTT[1].Subscribed {
		t.Fatalf("snapshot connections %+v", snap.MQTT)
	}
	if _, err := os.Stat(filepath.Join(dir, "buffer.db.line-b.subscriptions")); err != nil {
		t.Errorf("the second connection's subscriptions are not kept apart: %v", err)
	}

	b2.Close()
	waitFor(t, "the second connection to go down", 15*time.Second, func() bool { return !a.Snapshot().MQTT[1].Connected })
	if ok, why := a.Ready(); !ok {
		t.Fatalf("not ready with one of two brokers down: %s", why)
	}
	if snap := a.Snapshot(); snap.MQTTConnected || !snap.MQTT[0].Connected {
		t.Fatalf("snapshot: %+v", snap.MQTT)
	}
}
