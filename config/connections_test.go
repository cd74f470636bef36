package config

import (
	"testing"
)

// mqtt may be one connection (a mapping) or several (a sequence), each
// with its own name, client id, credentials and subscriptions.
func TestSeveralConnections(t *testing.T) {
	c := mustParse(t, `
gateway_id: gw
mqtt:
  - url: tcp://127.0.0.1:1883
    subscriptions:
      - filter: sensors/#
  - url: ssl://plant-broker:8883
    username: ferry
    receive_maximum: 100
    subscriptions:
      - filter: plant/+/status
        qos: 2
  - name: local-2
    url: tcp://127.0.0.1:1884
    subscriptions:
      - filter: sensors/#
forward:
  kafka:
    brokers: [127.0.0.1:9092]
  routes:
    - match: "#"
      topic: telemetry
`, testEnv())
	if len(c.MQTT) != 3 {
		t.Fatalf("%d connections, want 3", len(c.MQTT))
	}
	want := []struct{ name, clientID string }{
		{"127.0.0.1:1883", "ferry-gw"},
		{"plant-broker:8883", "ferry-gw"}, // one session per broker: the client id need not differ
		{"local-2", "ferry-gw"},
	}
	for i, w := range want {
		if m := c.MQTT[i]; m.Name != w.name || m.ClientID != w.clientID {
			t.Errorf("mqtt[%d]: name %q, client id %q; want %q, %q", i, m.Name, m.ClientID, w.name, w.clientID)
		}
	}
	if m := c.MQTT[1]; m.ReceiveMaximum != 100 || m.Subscriptions[0].QoS != 2 || m.KeepAlive != defaultKeepAlive {
		t.Errorf("mqtt[1]: %+v", m)
	}
	if c.MQTT[2].ReceiveMaximum != defaultReceiveMaximum {
		t.Errorf("mqtt[2] has no defaults: %+v", c.MQTT[2])
	}
	// Two connections to one broker need two sessions: the name tells
	// their client ids apart.
	two := mustParse(t, `
gateway_id: gw
mqtt:
  - name: a
    url: tcp://127.0.0.1:1883
    subscriptions: [{filter: "a/#"}]
  - name: b
    url: tcp://127.0.0.1:1883
    subscriptions: [{filter: "b/#"}]
forward:
  kafka:
    brokers: [127.0.0.1:9092]
  routes:
    - match: "#"
      topic: telemetry
`, testEnv())
	if two.MQTT[0].ClientID != "ferry-gw-a" || two.MQTT[1].ClientID != "ferry-gw-b" {
		t.Errorf("two connections to one broker: client ids %q, %q", two.MQTT[0].ClientID, two.MQTT[1].ClientID)
	}
	// The effective configuration prints them as a sequence again.
	out, err := c.Masked()
	if err != nil {
		t.Fatal(err)
	}
	if back := mustParse(t, string(out), testEnv()); len(back.MQTT) != 3 || back.MQTT[2].Name != "local-2" {
		t.Fatalf("masked config does not parse back to 3 connections:\n%s", out)
	}
}
