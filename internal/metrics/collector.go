package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metric is one metric the collector reads from a Source at scrape time.
type metric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	label string // the one variable label, if any
}

func newMetric(name, help string, typ prometheus.ValueType, label ...string) metric {
	m := metric{desc: prometheus.NewDesc(name, help, label, nil), typ: typ}
	if len(label) > 0 {
		m.label = label[0]
	}
	return m
}

const (
	counter = prometheus.CounterValue
	gauge   = prometheus.GaugeValue
)

var (
	mReceived     = newMetric("ferry_mqtt_messages_received_total", "Messages received from the MQTT brokers, all connections.", counter)
	mCommitted    = newMetric("ferry_buffer_messages_committed_total", "Received messages made durable (fsynced in the buffer, or acknowledged by Kafka first with sync: delayed), and so acknowledged to the broker.", counter)
	mForwarded    = newMetric("ferry_kafka_records_forwarded_total", "Records Kafka acknowledged.", counter)
	mDropped      = newMetric("ferry_records_dropped_total", "Records given up on purpose, by reason: max_bytes, max_age and purged (since the buffer file was created); unrouted, route (a route with drop: true), and MQTT messages acknowledged without storing them: too_large (over mqtt.max_payload_bytes), unsubscribed (through a filter removed from the configuration) (since start).", counter, "reason")
	mSessionLost  = newMetric("ferry_mqtt_sessions_lost_total", "Connections on which the MQTT broker no longer had ferry's session: what it had queued for ferry meanwhile is lost (broker restarted without persistence, or the session expired).", counter)
	mDeadLettered = newMetric("ferry_records_dead_lettered_total", "Records set aside in the buffer's dead-letter bucket since the file was created, by reason (undecodable, broken_batch, message_too_large, invalid_record, invalid_topic, topic_authorization_failed, policy_violation, unknown_topic).", counter, "reason")
	mRecords      = newMetric("ferry_buffer_records", "Records waiting in the buffer, in flight to Kafka included.", gauge)
	mBytes        = newMetric("ferry_buffer_bytes", "Encoded size of the records waiting in the buffer.", gauge)
	mInMemory     = newMetric("ferry_buffer_memory_records", "Of ferry_buffer_records, those held in memory only: with sync: delayed, not written yet (waiting for Kafka's acknowledgement up to buffer.write_delay, 8 times that during an outage; with when_full: block at max_bytes, until there is room).", gauge)
	mOldest       = newMetric("ferry_buffer_oldest_record_age_seconds", "Age of the oldest record waiting in the buffer (since ferry received it); 0 when the buffer is empty.", gauge)
	mFileBytes    = newMetric("ferry_buffer_file_bytes", "Size of the buffer file on disk.", gauge)
	mUsedBytes    = newMetric("ferry_buffer_used_bytes", "Part of the buffer file in pages holding data: what buffer.max_bytes bounds.", gauge)
	mCommits      = newMetric("ferry_buffer_commits_total", "Write transactions (each one fsync) of the buffer since it opened.", counter)
	mCorrupt      = newMetric("ferry_buffer_corrupt_files", "Damaged buffer files moved aside next to the buffer; what was readable of them was salvaged into the new buffer and forwarded.", gauge)
	mDiskFull     = newMetric("ferry_buffer_disk_full", "1 while the buffer's commits fail for want of space on the file system: records wait in memory, unacknowledged, and the broker holds the rest.", gauge)
	mCommitFails  = newMetric("ferry_buffer_commit_failures_total", "Failed commits of the buffer (disk full, write errors) since ferry started; each is retried.", counter)
	mMQTTConn     = newMetric("ferry_mqtt_connected", "1 while every MQTT connection is connected (ferry_mqtt_connection_connected has each one).", gauge)
	mMQTTSub      = newMetric("ferry_mqtt_subscribed", "1 while every MQTT connection's broker has granted its subscriptions.", gauge)
	mConnUp       = newMetric("ferry_mqtt_connection_connected", "1 while this MQTT connection (mqtt name; by default the broker's host:port) is connected.", gauge, "connection")
	mConnSub      = newMetric("ferry_mqtt_connection_subscribed", "1 while the broker has granted this connection's subscriptions.", gauge, "connection")
	mConnRecv     = newMetric("ferry_mqtt_connection_messages_received_total", "Messages received on this MQTT connection.", counter, "connection")
	mConnLost     = newMetric("ferry_mqtt_connection_sessions_lost_total", "Connections to this broker on which it no longer had ferry's session.", counter, "connection")
	mKafkaConns   = newMetric("ferry_kafka_connections", "Open connections to Kafka brokers.", gauge)
	mKafkaError   = newMetric("ferry_kafka_error", "1 while forwarding retries an error (Kafka unreachable, refusing or not acknowledging); records wait in the buffer.", gauge)
	mInFlight     = newMetric("ferry_kafka_in_flight_records", "Records produced to Kafka and not yet acknowledged.", gauge)
	mRetries      = newMetric("ferry_kafka_retries_total", "Times forwarding restarted after an error.", counter)
	mReady        = newMetric("ferry_ready", "1 when the buffer is open and the MQTT subscriptions are granted (as /readyz).", gauge)
	mHealthy      = newMetric("ferry_healthy", "1 unless the buffer's committer or the forwarder is stuck (as /healthz).", gauge)
)

var all = []metric{mReceived, mCommitted, mForwarded, mDropped, mDeadLettered, mRecords, mBytes, mInMemory, mOldest, mFileBytes,
	mUsedBytes, mCommits, mCorrupt, mDiskFull, mCommitFails, mMQTTConn, mMQTTSub, mSessionLost,
	mConnUp, mConnSub, mConnRecv, mConnLost, mKafkaConns, mKafkaError, mInFlight, mRetries, mReady, mHealthy}

// collector reads a Source at every scrape.
type collector struct{ src Source }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range all {
		ch <- m.desc
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Snapshot()
	put := func(m metric, v float64, label ...string) {
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, v, label...)
	}
	put(mReceived, float64(s.Received))
	put(mCommitted, float64(s.Committed))
	put(mForwarded, float64(s.Delivered))
	for r, n := range s.Dropped {
		put(mDropped, float64(n), r)
	}
	for r, n := range s.DeadLettered {
		put(mDeadLettered, float64(n), r)
	}
	put(mRecords, float64(s.BufferRecords))
	put(mBytes, float64(s.BufferBytes))
	put(mInMemory, float64(s.BufferInMemory))
	put(mCommits, float64(s.BufferCommits))
	put(mCorrupt, float64(s.CorruptFiles))
	put(mDiskFull, b2f(s.DiskFull))
	put(mCommitFails, float64(s.CommitFailures))
	put(mMQTTConn, b2f(s.MQTTConnected))
	put(mMQTTSub, b2f(s.MQTTSubscribed))
	put(mSessionLost, float64(s.MQTTSessionsLost))
	for _, c := range s.MQTT {
		put(mConnUp, b2f(c.Connected), c.Name)
		put(mConnSub, b2f(c.Subscribed), c.Name)
		put(mConnRecv, float64(c.Received), c.Name)
		put(mConnLost, float64(c.SessionsLost), c.Name)
	}
	put(mKafkaConns, float64(s.KafkaConns))
	put(mKafkaError, b2f(s.KafkaError != ""))
	put(mInFlight, float64(s.InFlight))
	put(mRetries, float64(s.KafkaRetries))
	ready, _ := c.src.Ready()
	put(mReady, b2f(ready))
	healthy, _ := c.src.Healthy()
	put(mHealthy, b2f(healthy))
	if info, err := c.src.BufferInfo(); err == nil {
		age := 0.0
		if !info.Oldest.IsZero() {
			age = max(0, time.Since(info.Oldest).Seconds())
		}
		put(mOldest, age)
		put(mFileBytes, float64(info.FileSize))
		put(mUsedBytes, float64(info.UsedBytes))
	}
}
