package agent

import (
	"maps"
	"net"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/config"
	"github.com/ferry-edge/ferry/forward"
	"github.com/ferry-edge/ferry/mqtt"
)

// This file is the one place that reads the stages' Stats for monitoring:
// metrics, health, systemd status and `ferry status` all go through
// Snapshot, so a renamed stats field is a one-line change here.

// Snapshot is the agent's state in plain numbers.
type Snapshot struct {
	// MQTTConnected and MQTTSubscribed hold when they hold for every
	// MQTT connection; MQTT has each connection's state.
	MQTTConnected  bool             `json:"mqtt_connected"`
	MQTTSubscribed bool             `json:"mqtt_subscribed"`
	MQTT           []MQTTConnection `json:"mqtt"`
	// MQTTSessionsLost counts connections on which the broker had lost
	// ferry's session (what it queued for ferry meanwhile is lost), since
	// start.
	MQTTSessionsLost uint64 `json:"mqtt_sessions_lost"`
	Received         uint64 `json:"received"`  // messages taken from the broker
	Committed        uint64 `json:"committed"` // of those, durable (fsynced, or acknowledged by Kafka) and so acknowledged

	BufferRecords  uint64 `json:"buffer_records"`   // records waiting in the buffer, in flight included
	BufferBytes    uint64 `json:"buffer_bytes"`     // their encoded size
	BufferInMemory uint64 `json:"buffer_in_memory"` // of BufferRecords, those not written yet (sync: delayed)
	BufferCommits  uint64 `json:"buffer_commits"`   // write transactions since the buffer opened
	CorruptFiles   int    `json:"corrupt_files"`    // damaged buffer files moved aside
	// CommitError is why the buffer's commits fail, while they do (the
	// disk is full, or refuses writes): records wait in memory, not
	// acknowledged, and the broker holds the rest. DiskFull says it is
	// for want of space.
	CommitError    string `json:"commit_error,omitempty"`
	DiskFull       bool   `json:"disk_full"`
	CommitFailures uint64 `json:"commit_failures"` // failed commits since start

	// Dropped counts records given up on purpose, by reason: the buffer's
	// limits ("max_bytes", "max_age"), "purged" by ferry buffer purge (all
	// since the buffer file was created), "unrouted" (no route matched),
	// "route" (a route with drop: true matched), and messages ingest
	// acknowledged without storing them: "too_large" (payload over
	// mqtt.max_payload_bytes) and "unsubscribed" (through a filter removed
	// from the configuration), these four since start.
	Dropped map[string]uint64 `json:"dropped"`
	// DeadLettered counts records set aside in the buffer's dead-letter
	// bucket since the file was created, by reason (buffer.Reason:
	// "undecodable", "broken_batch", and the forwarder's reasons such as
	// "message_too_large" or "unknown_topic").
	DeadLettered map[string]uint64 `json:"dead_lettered"`

	Delivered    uint64 `json:"delivered"`     // records Kafka acknowledged, since start
	InFlight     int    `json:"in_flight"`     // records produced, not yet acknowledged
	KafkaRetries uint64 `json:"kafka_retries"` // times forwarding restarted after an error
	KafkaError   string `json:"kafka_error"`   // what forwarding is retrying; "" when healthy
	// RateLimited: forward.max_bytes_per_second holds the drain back.
	RateLimited   bool   `json:"rate_limited"`
	KafkaConns    int64  `json:"kafka_conns"` // open connections to brokers (needs Hooks.Kafka: set by New)
	forwardedDone uint64 // delivered + unrouted + dead-lettered: records the forwarder finished
	bufferFull    bool   // when_full: block and at max_bytes: appends wait for room
}

// MQTTConnection is one MQTT connection's state.
type MQTTConnection struct {
	Name         string `json:"name"` // config's mqtt name
	URL          string `json:"url"`  // without a password
	Connected    bool   `json:"connected"`
	Subscribed   bool   `json:"subscribed"`
	Received     uint64 `json:"received"`
	Committed    uint64 `json:"committed"`
	SessionsLost uint64 `json:"sessions_lost"`
}

// Snapshot reads every stage's counters.
func (a *Agent) Snapshot() Snapshot {
	m, b, f := a.mqttStats(), a.buf.Stats(), a.fwd.Stats()
	s := Snapshot{
		MQTTConnected:    m.Connected,
		MQTTSubscribed:   m.Subscribed,
		MQTTSessionsLost: m.SessionsLost,
		Received:         m.Received,
		Committed:        m.Stored,
		BufferRecords:    b.Records,
		BufferBytes:      b.Bytes,
		BufferInMemory:   b.TailRecords,
		BufferCommits:    b.Commits,
		CorruptFiles:     b.CorruptFiles,
		CommitError:      b.CommitError,
		DiskFull:         b.DiskFull,
		CommitFailures:   b.CommitFailures,
		Dropped:          map[string]uint64{"unrouted": f.Unrouted, forward.DropRoute: f.DroppedByRoute},
		DeadLettered:     map[string]uint64{},
		Delivered:        f.Delivered,
		InFlight:         f.InFlight,
		KafkaRetries:     f.Retries,
		KafkaError:       f.LastError,
		RateLimited:      f.RateLimited,
		KafkaConns:       a.kafkaConns.Load(),
	}
	maps.Copy(s.Dropped, ingestDropped(m))
	for _, r := range []string{buffer.DropMaxBytes, buffer.DropMaxAge, buffer.DropPurged, buffer.DropDeadLetterLimit, buffer.DropDeadLetterPurged, buffer.DropCorrupt} {
		s.Dropped[r] = b.Dropped[r]
	}
	// Dead letters by reason, since the buffer file was created (the
	// buffer counts the forwarder's too).
	for _, reason := range []buffer.Reason{buffer.ReasonUndecodable, buffer.ReasonBrokenBatch,
		forward.ReasonTooLarge, forward.ReasonInvalidRecord, forward.ReasonInvalidTopic,
		forward.ReasonTopicAuthorization, forward.ReasonPolicyViolation, forward.ReasonUnknownTopic} {
		s.DeadLettered[string(reason)] = 0 // every reason has a series, zero until it happens
	}
	for reason, n := range b.DeadLettered {
		s.DeadLettered[string(reason)] = n
	}
	var dead uint64
	for _, n := range f.DeadLettered {
		dead += n
	}
	s.forwardedDone = f.Delivered + f.Unrouted + f.DroppedByRoute + dead
	s.bufferFull = b.Full
	for i, in := range a.ingests {
		c := in.Stats()
		s.MQTT = append(s.MQTT, MQTTConnection{Name: a.cfg.MQTT[i].Name, URL: config.RedactURL(a.cfg.MQTT[i].URL),
			Connected: c.Connected, Subscribed: c.Subscribed, Received: c.Received, Committed: c.Stored, SessionsLost: c.SessionsLost})
	}
	return s
}

// ingestStatus is what the status record tells of the MQTT side.
func (a *Agent) ingestStatus() forward.IngestStatus {
	m := a.mqttStats()
	st := forward.IngestStatus{Dropped: ingestDropped(m), SessionsLost: m.SessionsLost}
	for i, in := range a.ingests {
		c := in.Stats()
		st.Connections = append(st.Connections, forward.MQTTConnection{
			Name: a.cfg.MQTT[i].Name, URL: config.RedactURL(a.cfg.MQTT[i].URL),
			State: mqttState(c.State), Subscribed: c.Subscribed, Since: c.Since, LastError: c.LastError,
		})
	}
	return st
}

// mqttState is an MQTT connection's state as the status record tells it.
func mqttState(s mqtt.ConnState) forward.ConnState {
	switch s {
	case mqtt.StateConnecting:
		return forward.ConnConnecting
	case mqtt.StateConnected:
		return forward.ConnConnected
	case mqtt.StateUnreachable:
		return forward.ConnUnreachable
	case mqtt.StateRefused:
		return forward.ConnRefused
	case mqtt.StateStopped:
		return forward.ConnStopped
	}
	return forward.ConnState(s.String())
}

// ingestDropped is what ingest acknowledged without storing it, by reason.
func ingestDropped(m mqtt.Stats) map[string]uint64 {
	return map[string]uint64{"too_large": m.DroppedTooLarge, "unsubscribed": m.DroppedUnsubscribed}
}

// BufferInfo is what a read transaction on the buffer tells: the oldest
// record's age, the file's size. It costs a short read of the file, so it
// is for scrapes and `ferry status`, not for every message.
func (a *Agent) BufferInfo() (buffer.Info, error) { return a.buf.Info() }

// Hooks receive what the stages' counters cannot tell: latencies and
// connection changes. Each may be nil; each must be quick and safe for
// concurrent use.
type Hooks struct {
	// CommitLatency gets, for every record, the time from its Append to
	// the buffer reporting it durable (queueing, commit and fsync).
	CommitLatency func(time.Duration)
	// ProduceLatency gets, for every produce request, the time from
	// writing it to reading Kafka's answer.
	ProduceLatency func(time.Duration)
}

// timedSink is the buffer as the ingest's sink, timing each append until
// the record is durable.
type timedSink struct {
	buf     *buffer.Buffer
	observe func(time.Duration)
}

func (s timedSink) Append(rec *buffer.Record, done func(seq uint64, err error)) error {
	return s.buf.Append(rec, s.timed(done))
}

// TryAppend is the buffer's (see mqtt.Sink), timed.
func (s timedSink) TryAppend(rec *buffer.Record, done func(seq uint64, err error)) (bool, error) {
	return s.buf.TryAppend(rec, s.timed(done))
}

// timed wraps done to observe how long the record took to be durable.
func (s timedSink) timed(done func(seq uint64, err error)) func(seq uint64, err error) {
	start := time.Now()
	return func(seq uint64, err error) {
		if err == nil {
			s.observe(time.Since(start))
		}
		done(seq, err)
	}
}

// kafkaHooks are franz-go client hooks: open broker connections and
// produce request latency.
type kafkaHooks struct {
	a       *Agent
	produce func(time.Duration)
}

var (
	_ kgo.HookBrokerConnect    = kafkaHooks{}
	_ kgo.HookBrokerDisconnect = kafkaHooks{}
	_ kgo.HookBrokerE2E        = kafkaHooks{}
)

func (h kafkaHooks) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err == nil {
		h.a.kafkaConns.Add(1)
	}
}

func (h kafkaHooks) OnBrokerDisconnect(kgo.BrokerMetadata, net.Conn) { h.a.kafkaConns.Add(-1) }

func (h kafkaHooks) OnBrokerE2E(_ kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) {
	if key == int16(kmsg.Produce) && h.produce != nil && e2e.Err() == nil {
		h.produce(e2e.DurationE2E())
	}
}
