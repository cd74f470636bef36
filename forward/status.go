package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/buffer"
)

// Status is the record the forwarder sends to Config.StatusTopic, keyed by
// gateway id: which ferry runs and for how long, whether its connections
// are up, what the gateway holds and, above all, what it lost or set
// aside, so the data centre knows. The README documents it field by field.
type Status struct {
	GatewayID string `json:"gateway_id"`
	// Version is ferry's version (Config.Version).
	Version string    `json:"version"`
	Time    time.Time `json:"time"`
	// UptimeSeconds is how long ferry has run (since New).
	UptimeSeconds int64 `json:"uptime_seconds"`
	// MQTT has each MQTT connection's state, in the configuration's order
	// (from Config.Ingest); Kafka the state of ferry's Kafka clients.
	MQTT  []MQTTConnection `json:"mqtt"`
	Kafka KafkaConnection  `json:"kafka"`
	// Buffered is what waits in the buffer.
	BufferedRecords uint64 `json:"buffered_records"`
	BufferedBytes   uint64 `json:"buffered_bytes"`
	// OldestRecordAgeSeconds is how long the oldest record waiting has
	// waited since ferry received it (buffer.Stats.OldestAge); 0 when
	// nothing waits.
	OldestRecordAgeSeconds int64 `json:"oldest_record_age_seconds"`
	// Dropped counts records given up on purpose, by reason: what a
	// configured limit or a purge removed ("max_bytes", "max_age",
	// "purged", "dead_letter_limit", "dead_letter_purged", "corrupt"),
	// since the buffer file was created; what a route with Drop dropped
	// (DropRoute) and what IngestStatus.Dropped tells, since ferry
	// started.
	Dropped map[string]uint64 `json:"dropped"`
	// DeadLettered counts records set aside as undeliverable, by reason
	// (see the Reason constants; "undecodable" and "broken_batch" for
	// damaged records; every reason is there, zero until it happens),
	// since the buffer file was created. DeadLetterRecords and DeadLetterBytes
	// are what the dead-letter bucket holds now.
	DeadLettered      map[buffer.Reason]uint64 `json:"dead_lettered"`
	DeadLetterRecords uint64                   `json:"dead_letter_records"`
	DeadLetterBytes   uint64                   `json:"dead_letter_bytes"`
	// CorruptFiles is how many damaged buffer files ferry moved aside and
	// replaced with a new buffer: what was readable of them was salvaged
	// and forwarded, what was not is counted in Dropped (reason corrupt)
	// when their counters could be read.
	CorruptFiles int `json:"corrupt_files"`
	// DiskFull is true while the buffer's commits fail for want of space;
	// CommitError says why commits fail, while they do.
	DiskFull    bool   `json:"disk_full"`
	CommitError string `json:"commit_error,omitempty"`
	// BufferID names the buffer's log, as in the records' ferry.buffer_id
	// header.
	BufferID string `json:"buffer_id"`
	// Unrouted and Delivered count records since ferry started.
	Unrouted  uint64 `json:"unrouted"`
	Delivered uint64 `json:"delivered"`
	LastError string `json:"last_error,omitempty"`
	// MQTTSessionsLost counts, since ferry started, the connections on
	// which the MQTT broker no longer had ferry's session: what it had
	// queued for ferry was lost there.
	MQTTSessionsLost uint64 `json:"mqtt_sessions_lost"`
	// RateLimited is true while the byte-rate cap, MaxBytesPerSecond
	// (omitted when there is none), is what holds records back.
	RateLimited       bool `json:"rate_limited"`
	MaxBytesPerSecond int  `json:"max_bytes_per_second,omitempty"`
}

// IngestStatus is what the status record tells of the MQTT side, since
// ferry started: messages acknowledged and dropped, by reason (they join
// Status.Dropped), sessions the broker lost, and each connection's state.
type IngestStatus struct {
	Dropped      map[string]uint64
	SessionsLost uint64
	Connections  []MQTTConnection
}

// ConnState is what a connection is doing, as the status record tells it.
type ConnState string

const (
	// ConnConnecting: not connected, and nothing failed yet since ferry
	// started or the connection went down.
	ConnConnecting ConnState = "connecting"
	// ConnConnected: MQTT: the connection is up. Kafka: what ferry last
	// heard from Kafka was good: records acknowledged, or, with none to
	// send, a connection made.
	ConnConnected ConnState = "connected"
	// ConnUnreachable: the last attempt to connect failed (network, TLS,
	// timeout); it is retried with backoff.
	ConnUnreachable ConnState = "unreachable"
	// ConnRefused (MQTT): the broker refused ferry (credentials,
	// authorization, a certificate); retried, far less often.
	ConnRefused ConnState = "refused"
	// ConnNotAcknowledging (Kafka): records are in flight and none was
	// acknowledged for Config.StallTimeout: a silent uplink or broker.
	// The producer keeps retrying them.
	ConnNotAcknowledging ConnState = "not_acknowledging"
	// ConnFailing (Kafka): Kafka answers but fails records (a topic that
	// does not exist, too few in-sync replicas, authorization...); they
	// wait in the buffer and are retried.
	ConnFailing ConnState = "failing"
	// ConnStopped (MQTT): the connection's ingest stopped (ferry is
	// stopping).
	ConnStopped ConnState = "stopped"
)

// MQTTConnection is one MQTT connection's state in the status record.
type MQTTConnection struct {
	Name       string    `json:"name"` // the configuration's mqtt name
	URL        string    `json:"url"`  // the broker's, without credentials
	State      ConnState `json:"state"`
	Subscribed bool      `json:"subscribed"` // the broker granted the subscriptions on this connection
	// Since is when the connection came up or went down (when ferry
	// started, if it never came up); moving between the states of a
	// connection that is down does not move it.
	Since time.Time `json:"since"`
	// LastError is why the connection is down: the last error since it
	// was up.
	LastError string `json:"last_error,omitempty"`
}

// KafkaConnection is the state of ferry's Kafka clients in the status
// record: the forwarder's (its errors, acknowledgements and connections)
// and the status record's own (its connections).
type KafkaConnection struct {
	State ConnState `json:"state"`
	// Since is when the state became or stopped being ConnConnected
	// (when ferry started, if it never was).
	Since time.Time `json:"since"`
	// LastError is why the state is not ConnConnected.
	LastError string `json:"last_error,omitempty"`
}

// kafkaLink tracks KafkaConnection.
type kafkaLink struct {
	up    atomic.Bool // state is ConnConnected: an acknowledgement takes no lock
	mu    sync.Mutex
	state ConnState
	since time.Time
	err   string
}

func newKafkaLink() *kafkaLink {
	return &kafkaLink{state: ConnConnecting, since: time.Now()}
}

// set puts the link in state s, for the reason err ("" when connected).
func (k *kafkaLink) set(s ConnState, err string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.setLocked(s, err)
}

func (k *kafkaLink) setLocked(s ConnState, err string) {
	if (k.state == ConnConnected) != (s == ConnConnected) {
		k.since = time.Now()
	}
	k.state, k.err = s, err
	k.up.Store(s == ConnConnected)
}

// acknowledged notes records Kafka acknowledged.
func (k *kafkaLink) acknowledged() {
	if !k.up.Load() {
		k.set(ConnConnected, "")
	}
}

// connected notes a connection made to a broker: it tells that Kafka is
// reachable, not that it takes records, so it ends only the states
// nothing but a connection ends.
func (k *kafkaLink) connected() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.state == ConnConnecting || k.state == ConnUnreachable {
		k.setLocked(ConnConnected, "")
	}
}

// answering reports whether Kafka answers produce requests: connected,
// or failing for some records (a topic's error) while others go.
func (k *kafkaLink) answering() bool {
	if k.up.Load() {
		return true
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.state == ConnFailing
}

func (k *kafkaLink) load() KafkaConnection {
	k.mu.Lock()
	defer k.mu.Unlock()
	return KafkaConnection{State: k.state, Since: k.since.UTC(), LastError: k.err}
}

// kafkaState is the link state the error forwarding waits on stands for.
func kafkaState(err error) ConnState {
	switch {
	case errors.Is(err, errStalled):
		return ConnNotAcknowledging
	case errors.Is(err, errConnect):
		return ConnUnreachable
	}
	return ConnFailing
}

// statusHooks watch the status client's connections: a status record
// sent while no records wait tells that Kafka is reachable, or not.
type statusHooks struct{ f *Forwarder }

func (h statusHooks) OnBrokerConnect(meta kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil {
		h.f.kafka.set(ConnUnreachable, connectError(meta, err).Error())
		return
	}
	h.f.kafka.connected()
}

// reportStatus sends a Status record every StatusInterval, and within
// seconds when the drop or dead-letter counters or a connection's state
// change, until ctx is done.
// A failed send is logged (once per kind) and retried with the next one;
// it never holds up the data: cl is a client of its own.
func (f *Forwarder) reportStatus(ctx context.Context, cl *kgo.Client) {
	check := time.NewTicker(min(f.cfg.StatusInterval, 5*time.Second))
	defer check.Stop()
	var sent Status
	var last time.Time
	for {
		st := f.status(f.src.Stats())
		changed := !sameDrops(st.Dropped, sent.Dropped) || !maps.Equal(st.DeadLettered, sent.DeadLettered) || st.DiskFull != sent.DiskFull ||
			st.MQTTSessionsLost != sent.MQTTSessionsLost || st.RateLimited != sent.RateLimited || !sameStates(st, sent)
		if last.IsZero() || changed || time.Since(last) >= f.cfg.StatusInterval {
			if err := f.sendStatus(ctx, cl, st); err != nil {
				if ctx.Err() != nil {
					return
				}
				if key := errKey(err); f.statusErr.Swap(key) != key {
					f.log.Warn("cannot send the status record; will retry", "topic", f.cfg.StatusTopic, "err", err)
				}
			} else {
				f.statusErr.Store("")
				sent, last = st, time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-check.C:
		}
	}
}

// sameDrops reports whether a and b count the same drops, but for
// DropRoute: a drop route drops on purpose all the time, and that is no
// news worth an early status record (on a metered link, least of all).
func sameDrops(a, b map[string]uint64) bool {
	for k, v := range a {
		if k != DropRoute && b[k] != v {
			return false
		}
	}
	for k, v := range b {
		if k != DropRoute && a[k] != v {
			return false
		}
	}
	return true
}

// DropRoute is the reason Status.Dropped counts the records a route with
// Drop dropped under.
const DropRoute = "route"

// deadLetterReasons are the reasons a record is dead-lettered for: the
// buffer's and the forwarder's.
var deadLetterReasons = []buffer.Reason{buffer.ReasonUndecodable, buffer.ReasonBrokenBatch,
	ReasonTooLarge, ReasonInvalidRecord, ReasonInvalidTopic, ReasonTopicAuthorization, ReasonPolicyViolation, ReasonUnknownTopic}

// sameStates reports whether a and b tell the same connection states.
func sameStates(a, b Status) bool {
	return a.Kafka.State == b.Kafka.State && slices.EqualFunc(a.MQTT, b.MQTT, func(x, y MQTTConnection) bool {
		return x.State == y.State && x.Subscribed == y.Subscribed
	})
}

func (f *Forwarder) status(bs buffer.Stats) Status {
	fs := f.Stats()
	var in IngestStatus
	if f.cfg.Ingest != nil {
		in = f.cfg.Ingest()
	}
	dropped := map[string]uint64{DropRoute: fs.DroppedByRoute}
	maps.Copy(dropped, bs.Dropped)
	maps.Copy(dropped, in.Dropped)
	// Every reason has a count, zero until it happens.
	deadLettered := map[buffer.Reason]uint64{}
	for _, r := range deadLetterReasons {
		deadLettered[r] = 0
	}
	maps.Copy(deadLettered, bs.DeadLettered)
	mqtt := make([]MQTTConnection, len(in.Connections))
	for i, c := range in.Connections {
		c.Since = c.Since.UTC()
		mqtt[i] = c
	}
	return Status{
		GatewayID:              f.cfg.GatewayID,
		Version:                f.cfg.Version,
		Time:                   time.Now().UTC(),
		UptimeSeconds:          int64(time.Since(f.started) / time.Second),
		MQTT:                   mqtt,
		Kafka:                  f.kafka.load(),
		BufferedRecords:        bs.Records,
		BufferedBytes:          bs.Bytes,
		OldestRecordAgeSeconds: int64(bs.OldestAge / time.Second),
		Dropped:                dropped,
		DeadLettered:           deadLettered,
		DeadLetterRecords:      bs.DeadLetterRecords,
		DeadLetterBytes:        bs.DeadLetterBytes,
		CorruptFiles:           bs.CorruptFiles,
		DiskFull:               bs.DiskFull,
		CommitError:            bs.CommitError,
		BufferID:               bs.ID,
		Unrouted:               fs.Unrouted,
		Delivered:              fs.Delivered,
		LastError:              fs.LastError,
		MQTTSessionsLost:       in.SessionsLost,
		RateLimited:            fs.RateLimited,
		MaxBytesPerSecond:      f.cfg.MaxBytesPerSecond,
	}
}

func (f *Forwarder) sendStatus(ctx context.Context, cl *kgo.Client, st Status) error {
	v, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode status: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r := &kgo.Record{
		Topic: f.cfg.StatusTopic, Key: []byte(f.cfg.GatewayID), Value: v, Timestamp: st.Time,
		Headers: []kgo.RecordHeader{{Key: HeaderGateway, Value: []byte(f.cfg.GatewayID)}},
	}
	if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		return fmt.Errorf("produce status to %q: %w", f.cfg.StatusTopic, err)
	}
	return nil
}
