package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/agent"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestStatusText pins what `ferry status` prints, healthy and in trouble,
// against golden files (go test -run TestStatusText -update rewrites them).
func TestStatusText(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	base := statusReport{
		Version: "1.4.0", Commit: "0f4d48e509977fd2f6b75c2c00f90d208a8d1819", PID: 812,
		Started: now.Add(-26*time.Hour - 3*time.Minute), Ready: true, Healthy: true,
		MQTTURL: "tcp://127.0.0.1:1883", Kafka: []string{"kafka-1:9092", "kafka-2:9092"},
		Buffer: "/var/lib/ferry/buffer.db", FileSize: 268435456, AdminListen: "127.0.0.1:9464",
		Flow: agent.Snapshot{
			MQTTConnected: true, MQTTSubscribed: true, Received: 1204332, Committed: 1204332,
			BufferRecords: 12, BufferBytes: 3072, Delivered: 1204320, InFlight: 12, KafkaConns: 3,
			Dropped:      map[string]uint64{"max_bytes": 0, "max_age": 0, "purged": 0, "unrouted": 0},
			DeadLettered: map[string]uint64{"undecodable": 0, "message_too_large": 0},
		},
	}
	base.Oldest = now.Add(-1500 * time.Millisecond)

	trouble := base
	trouble.Ready, trouble.NotReady = false, "not connected to the MQTT broker"
	trouble.Healthy, trouble.Unhealthy = false, "buffer committer stuck: 1000 appends waiting, no commit for 31s"
	trouble.AdminListen = ""
	trouble.Flow.MQTTConnected, trouble.Flow.MQTTSubscribed = false, false
	trouble.Flow.BufferRecords, trouble.Flow.BufferBytes, trouble.Flow.InFlight, trouble.Flow.KafkaConns = 4_812_001, 1_203_000_250, 10000, 0
	trouble.Flow.KafkaError = "connect to Kafka broker kafka-1:9092: unable to dial: i/o timeout"
	trouble.Flow.KafkaRetries = 17
	trouble.Flow.Dropped = map[string]uint64{"max_bytes": 5120, "max_age": 0, "purged": 0, "unrouted": 3}
	trouble.Flow.DeadLettered = map[string]uint64{"undecodable": 1, "message_too_large": 0}
	trouble.Flow.CorruptFiles = 1
	trouble.Oldest = now.Add(-50 * time.Hour)

	several := base
	several.Flow.MQTTConnected = false
	several.Flow.MQTT = []agent.MQTTConnection{
		{Name: "local", URL: "tcp://127.0.0.1:1883", Connected: true, Subscribed: true, Received: 1204000, Committed: 1204000},
		{Name: "plant", URL: "ssl://ferry:xxxxx@plant-broker:8883", Received: 332, Committed: 332, SessionsLost: 1},
	}

	for name, r := range map[string]statusReport{"status_ok.txt": base, "status_trouble.txt": trouble, "status_several.txt": several} {
		var b bytes.Buffer
		writeStatus(&b, r, now)
		golden := filepath.Join("testdata", name)
		if *updateGolden {
			if err := os.MkdirAll("testdata", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b.Bytes(), want) {
			t.Errorf("%s:\ngot\n%s\nwant\n%s", name, b.String(), want)
		}
	}
}
