package main

import (
	"os"
	"path/filepath"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// TestFerryConfig checks that -config-extra and -set reach the file.
func TestFerryConfig(t *testing.T) {
	k, err := testenv.StartKafka()
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	fc := ferryConfig{
		Extra: []string{"buffer:\n  sync: interval\n  sync_interval: 50ms\nlog: {level: debug}\n"},
		Set:   []string{"buffer.sync_interval=20ms", "mqtt.receive_maximum=100", "forward.kafka.compression=zstd"},
	}
	path := filepath.Join(t.TempDir(), "ferry.yaml")
	admin, err := fc.write(path, &testenv.Broker{Addr: "127.0.0.1:1883"}, k, "telemetry", "/tmp/b.db")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]any{
		"buffer.sync": "interval", "buffer.sync_interval": "20ms", "buffer.path": "/tmp/b.db",
		"log.level": "debug", "mqtt.receive_maximum": 100, "forward.kafka.compression": "zstd",
		"mqtt.url": "tcp://127.0.0.1:1883", "admin.listen": admin,
	} {
		if got := getPath(doc, key); got != want {
			t.Errorf("%s = %v, want %v\n%s", key, got, want, raw)
		}
	}
	for _, bad := range []ferryConfig{{Set: []string{"nokey"}}, {Set: []string{"gateway_id.x=1"}}, {Extra: []string{"[a"}}} {
		if _, err := bad.write(path, &testenv.Broker{Addr: "127.0.0.1:1883"}, k, "telemetry", "/tmp/b.db"); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}
