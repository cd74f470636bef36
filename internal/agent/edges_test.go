package agent

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/forward"
	"github.com/ferry-edge/ferry/internal/testenv"
)

// Input at the edges goes through unchanged and in order: an empty
// payload, a binary one (every byte value, invalid UTF-8 included), and a
// message whose topic is at MQTT's length limit (65,535 bytes; its device
// level becomes a 65 KB key and header).
func TestPayloadAndTopicEdges(t *testing.T) {
	broker := testenv.NewBroker(t)
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	cfg := loadConfig(t, broker, kafka, topic)
	_, stop := startAgent(t, cfg, Options{})
	defer stop()

	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	longTopic := "sensors/" + strings.Repeat("d", 65535-len("sensors/")-len("/telemetry")) + "/telemetry"
	sent := []struct {
		topic   string
		payload []byte
	}{
		{"sensors/edge/telemetry", []byte{}},
		{"sensors/edge/telemetry", binary},
		{longTopic, []byte("long topic")},
		{"sensors/edge/telemetry", []byte("after")},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Each topic's messages on one connection: MQTT keeps the order of
	// one connection's messages, not of connections one after another
	// (the embedded broker, mochi, acknowledges a message before it
	// forwards it, and the next connection's message once overtook it).
	var topics []string
	want := map[string][][]byte{}
	for _, m := range sent {
		if _, ok := want[m.topic]; !ok {
			topics = append(topics, m.topic)
		}
		want[m.topic] = append(want[m.topic], m.payload)
	}
	for _, tp := range topics {
		if err := testenv.Publish(ctx, broker.URL(), tp, 1, want[tp]...); err != nil {
			t.Fatalf("publish on a %d-byte topic: %v", len(tp), err)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(kafka.Brokers()...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var got []*kgo.Record
	for len(got) < len(sent) && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) { got = append(got, r) })
	}
	if len(got) != len(sent) {
		t.Fatalf("%d of %d records reached Kafka", len(got), len(sent))
	}
	// The long topic's records are keyed by another device: order holds
	// per key, so compare per MQTT topic.
	byTopic := map[string][][]byte{}
	for _, r := range got {
		var mqttTopic string
		for _, h := range r.Headers {
			if h.Key == forward.HeaderMQTTTopic {
				mqttTopic = string(h.Value)
			}
		}
		byTopic[mqttTopic] = append(byTopic[mqttTopic], r.Value)
	}
	for tp, payloads := range want {
		if len(byTopic[tp]) != len(payloads) {
			t.Fatalf("topic of %d bytes: %d records, want %d", len(tp), len(byTopic[tp]), len(payloads))
		}
		for i := range payloads {
			if !bytes.Equal(byTopic[tp][i], payloads[i]) {
				t.Errorf("topic of %d bytes, record %d: payload %q, want %q", len(tp), i, byTopic[tp][i], payloads[i])
			}
		}
	}
}
