package metrics

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/config"
	"github.com/ferry-edge/ferry/internal/agent"
)

// newAgent returns an agent with a real buffer that is not running: its
// metrics are all there, with zero values.
func newAgent(t *testing.T) *agent.Agent {
	t.Helper()
	yaml := `gateway_id: gw-test
mqtt:
  url: tcp://127.0.0.1:1
  subscriptions: [{filter: sensors/+/telemetry}]
buffer:
  path: ` + filepath.Join(t.TempDir(), "buffer.db") + `
forward:
  kafka: {brokers: ["127.0.0.1:1"]}
  routes: [{match: "sensors/{device}/telemetry", topic: telemetry}]
`
	cfg, err := config.Parse("test.yaml", []byte(yaml), config.Env{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(cfg, nil, agent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Buffer().Close() })
	return a
}

// exposed returns the names of every time series m exposes, histogram
// series (_bucket, _sum, _count) included.
func exposed(t *testing.T, m *Metrics) map[string]bool {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[mf.GetName()+s] = true
			}
		}
	}
	return names
}

// TestDashboardMetricsExist checks packaging/grafana-dashboard.json against
// the metrics ferry exposes: every metric a query names exists, and every
// ferry_ metric is on the dashboard.
func TestDashboardMetricsExist(t *testing.T) {
	m := New(Build{Version: "test"})
	m.Attach(newAgent(t))
	names := exposed(t, m)

	data, err := os.ReadFile("../../packaging/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	var queries []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "query" || k == "definition") {
					queries = append(queries, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(dash)
	if len(queries) < 10 {
		t.Fatalf("found only %d queries in the dashboard", len(queries))
	}
	metricName := regexp.MustCompile(`\b(?:ferry|go|process)_[a-z0-9_]+\b`)
	used := map[string]bool{}
	for _, q := range queries {
		for _, name := range metricName.FindAllString(q, -1) {
			used[name] = true
			if !names[name] {
				t.Errorf("dashboard query %q uses %s, which ferry does not expose", q, name)
			}
		}
	}
	for name := range names {
		if strings.HasPrefix(name, "ferry_") && !used[name] && !strings.HasSuffix(name, "_sum") &&
			!(strings.HasSuffix(name, "_count") && names[strings.TrimSuffix(name, "_count")+"_bucket"]) &&
			!(names[name+"_bucket"]) {
			t.Errorf("ferry exposes %s but the dashboard does not show it", name)
		}
	}
}

// TestMetricNames pins the exposed ferry_ metric names: they are an
// interface (dashboards, alerts, the README's table).
func TestMetricNames(t *testing.T) {
	m := New(Build{Version: "test"})
	m.Attach(newAgent(t))
	var got []string
	for name := range exposed(t, m) {
		if strings.HasPrefix(name, "ferry_") {
			got = append(got, name)
		}
	}
	slices.Sort(got)
	want := []string{
		"ferry_buffer_bytes", "ferry_buffer_commit_failures_total", "ferry_buffer_commit_latency_seconds", "ferry_buffer_commit_latency_seconds_bucket",
		"ferry_buffer_commit_latency_seconds_count", "ferry_buffer_commit_latency_seconds_sum", "ferry_buffer_commits_total",
		"ferry_buffer_corrupt_files", "ferry_buffer_disk_full", "ferry_buffer_file_bytes", "ferry_buffer_memory_records", "ferry_buffer_messages_committed_total",
		"ferry_buffer_oldest_record_age_seconds", "ferry_buffer_records", "ferry_buffer_used_bytes", "ferry_build_info",
		"ferry_disk_written_bytes_total", "ferry_healthy", "ferry_kafka_connections", "ferry_kafka_error",
		"ferry_kafka_in_flight_records", "ferry_kafka_produce_latency_seconds", "ferry_kafka_produce_latency_seconds_bucket",
		"ferry_kafka_produce_latency_seconds_count", "ferry_kafka_produce_latency_seconds_sum",
		"ferry_kafka_records_forwarded_total", "ferry_kafka_retries_total", "ferry_mqtt_connected",
		"ferry_mqtt_connection_connected", "ferry_mqtt_connection_messages_received_total", "ferry_mqtt_connection_sessions_lost_total", "ferry_mqtt_connection_subscribed",
		"ferry_mqtt_messages_received_total", "ferry_mqtt_sessions_lost_total", "ferry_mqtt_subscribed", "ferry_ready", "ferry_records_dead_lettered_total",
		"ferry_records_dropped_total",
	}
	if !slices.Equal(got, want) {
		t.Errorf("ferry_ metrics:\ngot  %q\nwant %q", got, want)
	}
}

// fixedSource serves one snapshot; the buffer's figures are left out.
type fixedSource struct{ snap agent.Snapshot }

func (s fixedSource) Snapshot() agent.Snapshot { return s.snap }
func (fixedSource) BufferInfo() (buffer.Info, error) {
	return buffer.Info{}, errors.New("no buffer")
}
func (fixedSource) Ready() (bool, string)   { return true, "" }
func (fixedSource) Healthy() (bool, string) { return true, "" }

// TestConnectionMetrics checks that each MQTT connection has its own
// series, labelled with its name, next to the totals.
func TestConnectionMetrics(t *testing.T) {
	m := New(Build{Version: "test"})
	m.Attach(fixedSource{agent.Snapshot{
		MQTTConnected: false, MQTTSubscribed: false, Received: 7, MQTTSessionsLost: 1,
		MQTT: []agent.MQTTConnection{
			{Name: "line-a", Connected: true, Subscribed: true, Received: 5},
			{Name: "line-b", Connected: false, Subscribed: false, Received: 2, SessionsLost: 1},
		},
	}})
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range s.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case s.Gauge != nil:
				got[key] = s.GetGauge().GetValue()
			case s.Counter != nil:
				got[key] = s.GetCounter().GetValue()
			}
		}
	}
	for key, want := range map[string]float64{
		"ferry_mqtt_connected":                                             0,
		"ferry_mqtt_subscribed":                                            0,
		"ferry_mqtt_messages_received_total":                               7,
		"ferry_mqtt_sessions_lost_total":                                   1,
		"ferry_mqtt_connection_connected{connection=line-a}":               1,
		"ferry_mqtt_connection_connected{connection=line-b}":               0,
		"ferry_mqtt_connection_subscribed{connection=line-a}":              1,
		"ferry_mqtt_connection_subscribed{connection=line-b}":              0,
		"ferry_mqtt_connection_messages_received_total{connection=line-a}": 5,
		"ferry_mqtt_connection_messages_received_total{connection=line-b}": 2,
		"ferry_mqtt_connection_sessions_lost_total{connection=line-a}":     0,
		"ferry_mqtt_connection_sessions_lost_total{connection=line-b}":     1,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %v (exposed: %v), want %v", key, v, ok, want)
		}
	}
}
