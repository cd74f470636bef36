package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/config"
	"github.com/ferry-edge/ferry/forward"
	"github.com/ferry-edge/ferry/internal/testenv"
	"github.com/ferry-edge/ferry/mqtt"
)

// statusUntil reads the status records of topic from the start and
// returns the first of gateway gw-test that ok accepts.
func statusUntil(t *testing.T, kafka *testenv.Kafka, topic, what string, ok func(forward.Status) bool) forward.Status {
	t.Helper()
	cl, err := kgo.NewClient(append(kafka.ClientOpts(), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var last []byte
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("no status record with %s; the last one: %s", what, last)
		}
		for _, r := range fs.Records() {
			var st forward.Status
			if err := json.Unmarshal(r.Value, &st); err != nil {
				t.Fatalf("status record %s: %v", r.Value, err)
			}
			if st.GatewayID != "gw-test" {
				continue
			}
			if last = r.Value; ok(st) {
				t.Logf("status record with %s: %s", what, r.Value)
				return st
			}
		}
	}
}

// The status record tells ferry's version and each MQTT connection's
// state: both up, then one broker gone, named, since when and why.
func TestStatusRecordTellsMQTTConnections(t *testing.T) {
	a1, b2 := testenv.NewBroker(t), testenv.NewBroker(t)
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	status := testenv.UniqueTopic("status")
	if err := kafka.CreateTopic(context.Background(), status); err != nil {
		t.Fatal(err)
	}
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
  status_topic: %s
  status_interval: 1s
  kafka:
%s  routes:
    - match: sensors/{device}/telemetry
      topic: %s
`, a1.URL(), b2.URL(), filepath.Join(dir, "buffer.db"), status, kafka.FerryYAML(), topic)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, stop := startAgent(t, cfg, Options{Version: "9.9.9-test"})
	defer stop()

	st := statusUntil(t, kafka, status, "both connections subscribed", func(st forward.Status) bool {
		return len(st.MQTT) == 2 && st.MQTT[0].Subscribed && st.MQTT[1].Subscribed
	})
	for i, name := range []string{"line-a", "line-b"} {
		c := st.MQTT[i]
		if c.Name != name || c.URL != cfg.MQTT[i].URL || c.State != forward.ConnConnected || c.Since.Before(start.Add(-time.Second)) || c.LastError != "" {
			t.Errorf("connection %d: %+v, want %s at %s connected since the start", i, c, name, cfg.MQTT[i].URL)
		}
	}
	if st.Version != "9.9.9-test" || st.Kafka.State != forward.ConnConnected {
		t.Errorf("version %q, kafka %+v; want 9.9.9-test, connected", st.Version, st.Kafka)
	}

	b2.Close()
	closed := time.Now()
	st = statusUntil(t, kafka, status, "line-b down", func(st forward.Status) bool {
		return st.Time.After(closed) && len(st.MQTT) == 2 && st.MQTT[1].State != forward.ConnConnected
	})
	if b := st.MQTT[1]; b.Subscribed || b.Since.Before(closed.Add(-5*time.Second)) || b.LastError == "" {
		t.Errorf("line-b after its broker went: %+v, want down since then, and why", b)
	}
	if a := st.MQTT[0]; a.State != forward.ConnConnected || !a.Subscribed {
		t.Errorf("line-a: %+v, want still connected", a)
	}
}

// Every state of an MQTT connection has its name in the status record.
func TestMQTTStateNames(t *testing.T) {
	for s := mqtt.StateConnecting; s <= mqtt.StateStopped; s++ {
		if got := mqttState(s); string(got) != s.String() || got == "unknown" {
			t.Errorf("mqtt state %v is %q in the status record", s, got)
		}
	}
}
