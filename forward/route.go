package forward

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/topic"
)

// Header names set on every Kafka record.
const (
	HeaderMQTTTopic       = "mqtt.topic"
	HeaderGateway         = "ferry.gateway_id"
	HeaderQoS             = "mqtt.qos"
	HeaderContentType     = "mqtt.content_type"
	HeaderResponseTopic   = "mqtt.response_topic"
	HeaderCorrelationData = "mqtt.correlation_data"
	HeaderPayloadFormat   = "mqtt.payload_format" // "utf-8" when the publisher said so
	// HeaderClock is "unsynced" on a record received while the gateway's
	// clock was not synchronized: its timestamp may be far off.
	HeaderClock = "ferry.clock"

	// HeaderBufferID and HeaderSeq identify a record for the life of the
	// gateway: together with HeaderGateway they are unique, and a record
	// produced twice (after a crash, or a stop while Kafka was silent)
	// carries the same three values both times, so a consumer can drop
	// the second copy. HeaderSeq is the buffer's sequence number in
	// decimal; HeaderBufferID names the buffer file's log (a buffer
	// salvaged from a damaged file keeps it and numbers on; a new file
	// whose predecessor's counters were unreadable starts a new log).
	HeaderBufferID = "ferry.buffer_id"
	HeaderSeq      = "ferry.seq"

	// HeaderLate is set on a record that waited in the buffer longer than
	// Config.LateAfter: how long, in milliseconds (decimal), from its
	// receipt to when the forwarder read it to produce it. The record's
	// timestamp stays its receive time. The records the producer already
	// held when the uplink failed (at most the window) keep no header: a
	// header cannot change once produced, and producing them again would
	// make duplicates.
	HeaderLate = "ferry.late_ms"
)

// SetRoutes replaces the routes while the forwarder runs (a configuration
// reload). Records read from the buffer from then on are routed by the new
// ones; those in flight keep their routing. Records waiting for a topic
// that does not exist are read again and follow the new routes (which may
// send them elsewhere, or nowhere: then they are counted as unrouted),
// ahead of any record read after them. It fails, changing nothing, on an
// empty list.
func (f *Forwarder) SetRoutes(routes []Route) error {
	if len(routes) == 0 {
		return errors.New("forward: no routes")
	}
	for i, r := range routes {
		switch {
		case !r.Drop && r.Topic == nil:
			return fmt.Errorf("forward: route %d has no topic", i)
		case r.Match != nil && slices.Contains(r.Match.Names(), topic.GatewayName):
			return fmt.Errorf("forward: route %d: the pattern %q captures {%s}, which names the gateway id", i, r.Match, topic.GatewayName)
		}
	}
	routes = slices.Clone(routes)
	for i := range routes {
		hs := slices.Clone(routes[i].Headers)
		for j := range hs {
			if hs[j].Value.IsStatic() { // once, not once per record
				hs[j].static = []byte(hs[j].Value.Expand(nil))
			}
		}
		routes[i].Headers = hs
	}
	f.routes.Store(&routes)
	f.routesGen.Add(1)
	return nil
}

// Route sends records whose MQTT topic matches Match to Topic, keyed by
// Key, with Headers beside ferry's own, in Format; or, with Drop, drops
// them (counted in Stats.DroppedByRoute). Templates are parsed with
// topic.TemplateNames(Match): Match's captures ({#} for what a "#" level
// matched), then {gateway_id}.
type Route struct {
	// Match selects the records by MQTT topic; nil makes a default route,
	// which matches every topic, '$' topics too, and captures the whole
	// topic as {#}.
	Match   *topic.Pattern
	Drop    bool
	Topic   *topic.Template
	Key     *topic.Template // nil: no key (records are partitioned by MQTT topic)
	Headers []Header
	Format  Format
}

// Header is a Kafka record header a route adds: Name with Value expanded.
type Header struct {
	Name  string
	Value *topic.Template

	static []byte // Value's text when it has no placeholders (see SetRoutes)
}

// Format is how a route writes a record's value.
type Format uint8

const (
	// FormatRaw: the MQTT payload, unchanged.
	FormatRaw Format = iota
	// FormatEnvelope: one JSON object with the payload and the message's
	// MQTT metadata (see appendEnvelope).
	FormatEnvelope
)

func (f Format) String() string {
	if f == FormatEnvelope {
		return "envelope"
	}
	return "raw"
}

// routeResult is what routing made of a record.
type routeResult uint8

const (
	unrouted routeResult = iota // no route matched
	routed                      // kr holds the Kafka record
	dropped                     // a Drop route matched
)

// route fills kr with the Kafka record for rec by the first of routes that
// matches. now decides whether the record is late (HeaderLate). vals is
// scratch space for captures. The headers go into hdrs and the short
// header values and key into buf when they fit (a slot's own arrays: no
// allocation for the common record), else into new memory.
func (f *Forwarder) route(routes []Route, rec *buffer.Record, now time.Time, kr *kgo.Record, hdrs []kgo.RecordHeader, buf []byte, vals []string) (routeResult, []string) {
	for i := range routes {
		r := &routes[i]
		if r.Match == nil {
			vals = append(vals[:0], rec.Topic)
		} else {
			var ok bool
			if vals, ok = r.Match.Match(rec.Topic, vals); !ok {
				continue
			}
		}
		if r.Drop {
			return dropped, vals
		}
		vals = append(vals, f.cfg.GatewayID)
		*kr = kgo.Record{
			Topic:     r.Topic.Expand(vals),
			Value:     rec.Payload,
			Timestamp: rec.ReceivedAt,
		}
		if r.Format == FormatEnvelope {
			kr.Value = appendEnvelope(nil, rec, f.cfg.GatewayID)
		}
		var key string
		if r.Key != nil {
			key = r.Key.Expand(vals)
		}
		var late time.Duration
		if !rec.ClockUnsynced && f.cfg.LateAfter > 0 {
			// A record received before the clock was set has no
			// trustworthy wait: it carries HeaderClock instead.
			if late = now.Sub(rec.ReceivedAt); late <= f.cfg.LateAfter {
				late = 0
			}
		}
		// The MQTT topic, the sequence number, the wait and the key share
		// buf.
		if need := len(rec.Topic) + 40 + len(key); cap(buf) < need {
			buf = make([]byte, 0, need)
		}
		buf = append(buf[:0], rec.Topic...)
		topicVal := buf[:len(rec.Topic):len(rec.Topic)]
		buf = strconv.AppendUint(buf, rec.Seq, 10)
		seqVal := buf[len(topicVal):len(buf):len(buf)]
		var lateVal []byte
		if late > 0 {
			n := len(buf)
			buf = strconv.AppendInt(buf, late.Milliseconds(), 10)
			lateVal = buf[n:len(buf):len(buf)]
		}
		if r.Key != nil {
			buf = append(buf, key...)
			kr.Key = buf[len(buf)-len(key) : len(buf) : len(buf)]
		}
		n := 5 + len(rec.UserProperties) + len(r.Headers)
		for _, set := range [...]bool{rec.ContentType != "", rec.ResponseTopic != "", len(rec.CorrelationData) > 0, rec.PayloadUTF8, rec.ClockUnsynced, late > 0} {
			if set {
				n++
			}
		}
		h := hdrs[:0]
		if cap(h) < n {
			h = make([]kgo.RecordHeader, 0, n)
		}
		h = append(h,
			kgo.RecordHeader{Key: HeaderMQTTTopic, Value: topicVal}, // first: the partitioner reads it
			kgo.RecordHeader{Key: HeaderGateway, Value: f.gateway},
			kgo.RecordHeader{Key: HeaderBufferID, Value: f.bufferID},
			kgo.RecordHeader{Key: HeaderSeq, Value: seqVal},
			kgo.RecordHeader{Key: HeaderQoS, Value: qosValues[rec.QoS&3]},
		)
		if rec.ContentType != "" {
			h = append(h, kgo.RecordHeader{Key: HeaderContentType, Value: []byte(rec.ContentType)})
		}
		if rec.ResponseTopic != "" {
			h = append(h, kgo.RecordHeader{Key: HeaderResponseTopic, Value: []byte(rec.ResponseTopic)})
		}
		if len(rec.CorrelationData) > 0 {
			h = append(h, kgo.RecordHeader{Key: HeaderCorrelationData, Value: rec.CorrelationData})
		}
		if rec.PayloadUTF8 {
			h = append(h, kgo.RecordHeader{Key: HeaderPayloadFormat, Value: utf8Value})
		}
		if rec.ClockUnsynced {
			h = append(h, kgo.RecordHeader{Key: HeaderClock, Value: unsyncedValue})
		}
		if late > 0 {
			h = append(h, kgo.RecordHeader{Key: HeaderLate, Value: lateVal})
		}
		for _, rh := range r.Headers {
			v := rh.static // shared by every record: franz-go only reads it
			if v == nil {
				v = []byte(rh.Value.Expand(vals))
			}
			h = append(h, kgo.RecordHeader{Key: rh.Name, Value: v})
		}
		for _, p := range rec.UserProperties {
			h = append(h, kgo.RecordHeader{Key: p.Key, Value: []byte(p.Value)})
		}
		kr.Headers = h
		return routed, vals
	}
	return unrouted, vals
}

// Header values shared by every record (franz-go only reads them).
var (
	qosValues     = [4][]byte{[]byte("0"), []byte("1"), []byte("2"), []byte("3")}
	utf8Value     = []byte("utf-8")
	unsyncedValue = []byte("unsynced")
)

// recordSize is what a record costs in a produce request, near enough:
// key, value, topic and headers.
func recordSize(r *kgo.Record) int {
	n := len(r.Key) + len(r.Value) + len(r.Topic)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// maxTopicLen is Kafka's limit on a topic name's length.
const maxTopicLen = 249

// validTopic checks a topic name as Kafka does (Topic.validate): 1 to 249
// characters from [a-zA-Z0-9._-], and neither "." nor "..". A route's
// template can make any name from what a publisher chose as a topic level,
// so every expanded name is checked before it is produced.
func validTopic(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty topic name")
	case name == "." || name == "..":
		return fmt.Errorf("topic name %q is not allowed", name)
	case len(name) > maxTopicLen:
		return fmt.Errorf("topic name of %d characters is longer than %d", len(name), maxTopicLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-' {
			continue
		}
		return fmt.Errorf("topic name %q has the character %q (Kafka allows a-z A-Z 0-9 . _ -)", name, rune(c))
	}
	return nil
}

// partitioner places a record by its key as Kafka's own producer does
// (murmur2), and a record without a key by its MQTT topic. Either way a
// record produced again goes to the partition it went to before, which is
// what keeps first occurrences in order per partition when a failed record
// is re-sent after later ones were delivered. (Kafka's default for
// records without a key, sticky partitioning, picks a partition per batch.)
type partitioner struct{ byKey kgo.Partitioner }

func newPartitioner() kgo.Partitioner {
	return partitioner{byKey: kgo.StickyKeyPartitioner(nil)}
}

func (p partitioner) ForTopic(t string) kgo.TopicPartitioner {
	return topicPartitioner{p.byKey.ForTopic(t)}
}

type topicPartitioner struct{ byKey kgo.TopicPartitioner }

func (topicPartitioner) RequiresConsistency(*kgo.Record) bool { return true }

func (tp topicPartitioner) Partition(r *kgo.Record, n int) int {
	if r.Key != nil || len(r.Headers) == 0 {
		return tp.byKey.Partition(r, n)
	}
	return tp.byKey.Partition(&kgo.Record{Key: r.Headers[0].Value}, n)
}
