// Package metrics serves ferry's monitoring endpoint over HTTP: Prometheus
// metrics at /metrics, liveness at /healthz and readiness at /readyz.
//
// The metrics are read from the running agent at scrape time (its
// Snapshot and, once per scrape, a short read of the buffer file), so the
// data path carries no metrics code beyond two latency histograms, which
// the agent feeds through its Hooks. Every metric name is listed in Names;
// a test checks that the Grafana dashboard in packaging/ uses only those.
package metrics

import (
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/agent"
)

// Source is what the metrics and the health endpoints read: *agent.Agent.
type Source interface {
	Snapshot() agent.Snapshot
	BufferInfo() (buffer.Info, error)
	Ready() (bool, string)
	Healthy() (bool, string)
}

// Build identifies the running binary.
type Build struct{ Version, Commit, Date string }

// Metrics holds ferry's collectors in their own registry.
type Metrics struct {
	Registry *prometheus.Registry
	commit   prometheus.Histogram
	produce  prometheus.Histogram
	src      Source
}

// latencyBuckets span a fast fsync (under a millisecond) to a slow SD card
// or a distant broker (seconds).
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// New returns ferry's metrics for build. Hooks feeds the latency
// histograms: pass it to agent.New, then call Attach with the agent.
func New(build Build) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.commit = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ferry_buffer_commit_latency_seconds",
		Help:    "Time from a message's arrival in the buffer to its being durable (queueing, commit and fsync), after which it is acknowledged to the broker.",
		Buckets: latencyBuckets,
	})
	m.produce = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ferry_kafka_produce_latency_seconds",
		Help:    "Time from writing a produce request to a Kafka broker to reading its answer.",
		Buckets: latencyBuckets,
	})
	m.Registry.MustRegister(m.commit, m.produce,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "ferry_build_info",
			Help:        "Always 1; the labels identify the running ferry.",
			ConstLabels: prometheus.Labels{"version": build.Version, "commit": build.Commit, "date": build.Date},
		}, func() float64 { return 1 }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ferry_disk_written_bytes_total",
			Help: "Bytes ferry caused to be written to storage (write_bytes in /proc/self/io): the wear on the gateway's flash.",
		}, diskWritten),
	)
	return m
}

// Hooks returns the agent hooks that feed the latency histograms.
func (m *Metrics) Hooks() agent.Hooks {
	return agent.Hooks{
		CommitLatency:  func(d time.Duration) { m.commit.Observe(d.Seconds()) },
		ProduceLatency: func(d time.Duration) { m.produce.Observe(d.Seconds()) },
	}
}

// Attach registers the collector that reads src at every scrape.
func (m *Metrics) Attach(src Source) {
	m.src = src
	m.Registry.MustRegister(&collector{src: src})
}

// diskWritten reads write_bytes from /proc/self/io; 0 where there is none.
func diskWritten() float64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes: "); ok {
			n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return n
		}
	}
	return 0
}
