package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// sampleReport is a report with every section, as a run with -baseline
// and an outage would produce; the write_bytes of the bridge are 0 and
// its buffer file unknown.
func sampleReport() *Report {
	f64 := func(f float64) *float64 { return &f }
	i64 := func(i int64) *int64 { return &i }
	ferry := &PhaseReport{
		Name: "ferry", Sent: 20000, Acknowledged: 20000, Delivered: 20000,
		PublishRate: 999.8, MsgsPerSec: 998.9, PublishSeconds: 20.0,
		Latency: LatencyReport{P50: 2.1, P99: 7.9, Max: 15.2},
		Process: &ProcessReport{PID: 42, WindowSeconds: 20.1, CPUSeconds: 2.46, CPUPercent: 12.2, CPUSecondsPer100k: 12.3,
			PeakRSSMB: 38.2, PeakAnonRSSMB: 20.5, RSSMB: 30.1, Disk: DiskReport{WriteBytes: i64(12_300_000), BytesPerPayloadByte: f64(3.075)},
			BufferCommits: f64(10000), MessagesPerCommit: f64(2)},
		Host:        HostReport{BusyPercent: 35, HarnessCPUSeconds: 3.1, BrokerCPUSeconds: f64(1.2)},
		PeakBacklog: 12,
		Outage: &OutageReport{AtSeconds: 5, Seconds: 10, Backlog: 10000, DrainSeconds: f64(3), DrainMsgsPerSec: f64(4000),
			FirstArrivalSeconds: f64(2.5), DrainOnlyMsgsPerSec: f64(24000)},
	}
	bridge := &PhaseReport{
		Name: "bridge", Sent: 300000, Acknowledged: 300000, Delivered: 300000,
		PublishRate: 30000, MsgsPerSec: 29900, Latency: LatencyReport{P50: 20, P99: 70, Max: 99},
		Process: &ProcessReport{PID: 43, WindowSeconds: 10, CPUSeconds: 6, CPUPercent: 60, CPUSecondsPer100k: 2,
			PeakRSSMB: 28, PeakAnonRSSMB: 21, RSSMB: 25, Disk: DiskReport{WriteBytes: i64(0), BytesPerPayloadByte: f64(0)}},
		Host: HostReport{BusyPercent: 95, HarnessCPUSeconds: 8, BrokerCPUSeconds: f64(4.4)},
	}
	alone := &PhaseReport{
		Name: "broker alone", Sent: 260000, Acknowledged: 260000, Delivered: 260000,
		PublishRate: 26000, MsgsPerSec: 25950, Latency: LatencyReport{P50: 5, P99: 24, Max: 48},
		Host: HostReport{BusyPercent: 92, HarnessCPUSeconds: 12},
	}
	return &Report{
		Setup: Setup{Ferry: "ferry dev (commit unknown, built unknown, go1.26)", FerryBinary: "/tmp/ferry", FerrySource: "/src/ferry at abc1234 + uncommitted changes",
			Broker: "mosquitto (child process) at 127.0.0.1:1883", Kafka: "kfake in process, 4 partitions per topic",
			Devices: 100, QoS: 1, PayloadBytes: 200, TargetRate: 1000, Duration: 20,
			Outage: "Kafka cut off 5s after the first publish, for 10s", Set: []string{"buffer.sync=interval"},
			WorkDir: "/tmp/ferry-bench-1", FileSystem: "ext4", CPUs: 2},
		Ferry: ferry,
		Baseline: &BaselineReport{
			BrokerAlone: alone, Bridge: bridge,
			Disk:       DiskBaseline{Batch: 100, PayloadsPerSec: 200000, SyncsPerSec: 2000, BytesPerPayloadByte: f64(1.2)},
			DiskSingle: DiskBaseline{Batch: 1, PayloadsPerSec: 3500, SyncsPerSec: 3500, BytesPerPayloadByte: f64(21.4)},
			Kafka:      KafkaBaseline{MsgsPerSec: 1_000_000, Acked: 1_000_000},
			Ceilings: []Ceiling{
				{Name: "broker alone (in-process subscriber, acks at once)", MsgsPerSec: 25950, FerryFraction: 998.9 / 25950},
				{Name: "bridge, no disk (child: paho -> franz-go, acks at once)", MsgsPerSec: 29900, FerryFraction: 998.9 / 29900},
				{Name: "disk alone (100 payloads per fdatasync)", MsgsPerSec: 200000, FerryFraction: 998.9 / 200000},
				{Name: "Kafka alone (franz-go from memory)", MsgsPerSec: 1_000_000, FerryFraction: 998.9 / 1_000_000},
			},
			Lowest: "broker alone (in-process subscriber, acks at once)", FerryFraction: 998.9 / 25950,
		},
		OK: true,
	}
}

// TestReportText compares the human report with its golden file
// (go test ./cmd/ferry-bench -run TestReportText -update rewrites it).
func TestReportText(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().writeText(&b); err != nil {
		t.Fatal(err)
	}
	golden(t, "report.txt", b.Bytes())

	var idle bytes.Buffer
	wb := int64(0)
	r := &Report{Setup: Setup{Ferry: "ferry dev", Broker: "mochi (embedded, in process) at 127.0.0.1:1", Kafka: "kfake",
		WorkDir: "/tmp/x", FileSystem: "tmpfs", CPUs: 2},
		Idle: &IdleReport{Seconds: 60, CPUSeconds: 0.3, CPUPercent: 0.5, CPUSecondsPerHour: 18, PeakRSSMB: 20, PeakAnonRSSMB: 12, RSSMB: 19,
			Disk: DiskReport{NotMeasured: "read /proc/1/io: permission denied", BufferFileGrowth: &wb}}, OK: true}
	if err := r.writeText(&idle); err != nil {
		t.Fatal(err)
	}
	golden(t, "idle.txt", idle.Bytes())
}

// TestReportJSON checks that unmeasured figures are null, not 0.
func TestReportJSON(t *testing.T) {
	r := sampleReport()
	r.Ferry.Process.Disk = diskReport(ioCounters{Err: errors.New("storage writes are not accounted here")}, 1000, 200, 4096)
	var b bytes.Buffer
	if err := r.writeJSON(&b); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Ferry struct {
			Process struct {
				Disk map[string]any `json:"disk"`
			} `json:"process"`
		} `json:"ferry"`
	}
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	d := doc.Ferry.Process.Disk
	if v, ok := d["write_bytes"]; !ok || v != nil {
		t.Errorf("write_bytes = %v (present %v), want null", v, ok)
	}
	if v, ok := d["bytes_per_payload_byte"]; !ok || v != nil {
		t.Errorf("bytes_per_payload_byte = %v (present %v), want null", v, ok)
	}
	if d["not_measured"] == "" || d["buffer_file_growth_bytes"] != 4096.0 {
		t.Errorf("disk = %v, want a reason and the file's growth", d)
	}
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file; got:\n%s\nwant:\n%s", name, got, want)
	}
}
