package mqtt

import (
	"encoding/binary"
	"unicode/utf8"

	"github.com/eclipse/paho.golang/packets"

	"github.com/ferry-edge/ferry/buffer"
)

// inbound is a message as ingest takes it (receive): from paho
// (onPublish), or read by bufConn from the connection's buffer. Its
// payload and the record's byte slices may point into that buffer: they
// are valid until receive returns.
type inbound struct {
	topic   string
	payload []byte
	id      uint16 // packet identifier (QoS 1 and 2)
	qos     byte
	// stub: a stand-in for a message whose payload, of size bytes, was
	// over the limit (see bufConn.nextPacket).
	stub bool
	size int
	// rec holds the message's properties as the record takes them (and
	// Retain); receive fills in the rest.
	rec   buffer.Record
	props []buffer.Property // rec.UserProperties' array, reused
}

// reset forgets the message, keeping rec's array of user properties.
func (m *inbound) reset() {
	clear(m.rec.UserProperties)
	*m = inbound{props: m.props[:0]}
}

// MQTT 5 property identifiers a PUBLISH from a broker may carry (MQTT 5.0
// section 3.3.2.3).
const (
	propPayloadFormat   = 0x01
	propMessageExpiry   = 0x02
	propContentType     = 0x03
	propResponseTopic   = 0x08
	propCorrelationData = 0x09
	propSubscriptionID  = 0x0B
	propTopicAlias      = 0x23
	propUser            = 0x26
)

// parsePublish parses the PUBLISH packet b (fixed header hdr bytes long)
// into m, its topic interned in topics. It takes only what it can read
// exactly as paho would: QoS 0 or 1, a topic of valid UTF-8 without a
// topic alias, a packet identifier other than 0, and no property but those
// ingest keeps (each once, except user properties), the message expiry
// and a subscription identifier other than 0 (which marks a stub). Any
// other packet, malformed or not, it leaves to paho (ok false), which
// reads it as before and says what is wrong with it.
func parsePublish(b []byte, hdr int, m *inbound, topics *interner) bool {
	first := b[0]
	qos := first >> 1 & 3
	if first>>4 != packets.PUBLISH || qos > 1 {
		return false
	}
	p := b[hdr:]
	if len(p) < 2 {
		return false
	}
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if n == 0 || n > len(p) || !utf8.Valid(p[:n]) {
		return false
	}
	topic := p[:n]
	p = p[n:]
	var id uint16
	if qos > 0 {
		if len(p) < 2 {
			return false
		}
		if id = binary.BigEndian.Uint16(p); id == 0 {
			return false
		}
		p = p[2:]
	}
	k, plen, ok := uvarint(p)
	if !ok || plen > len(p)-k {
		return false
	}
	props, payload := p[k:k+plen], p[k+plen:]

	rec := buffer.Record{Retain: first&1 != 0}
	user := m.props[:0]
	var seen uint32 // properties met, by bit, to refuse a repeated one
	for len(props) > 0 {
		id := props[0]
		props = props[1:]
		if id != propUser {
			bit := uint32(1) << (id & 31)
			if seen&bit != 0 {
				return false
			}
			seen |= bit
		}
		switch id {
		case propPayloadFormat:
			if len(props) < 1 || props[0] > 1 {
				return false
			}
			rec.PayloadUTF8 = props[0] == 1
			props = props[1:]
		case propMessageExpiry:
			if len(props) < 4 {
				return false
			}
			props = props[4:]
		case propSubscriptionID:
			k, v, ok := uvarint(props)
			if !ok || v == 0 {
				return false
			}
			props = props[k:]
		case propContentType, propResponseTopic:
			var s []byte
			if s, props, ok = binaryField(props); !ok || !utf8.Valid(s) {
				return false
			}
			if id == propContentType {
				rec.ContentType = string(s)
			} else {
				rec.ResponseTopic = string(s)
			}
		case propCorrelationData:
			var s []byte
			if s, props, ok = binaryField(props); !ok {
				return false
			}
			rec.CorrelationData = s
		case propUser:
			var k, v []byte
			if k, props, ok = binaryField(props); !ok || !utf8.Valid(k) {
				return false
			}
			if v, props, ok = binaryField(props); !ok || !utf8.Valid(v) {
				return false
			}
			user = append(user, buffer.Property{Key: string(k), Value: string(v)})
		default: // a topic alias, or what a broker does not send
			return false
		}
	}
	if len(user) > 0 {
		rec.UserProperties, m.props = user, user[:0]
	}
	m.topic, m.payload, m.id, m.qos = topics.get(topic), payload, id, qos
	m.stub, m.size = false, 0
	m.rec = rec
	return true
}

// binaryField splits a two-byte length and that many bytes (an MQTT string
// or binary data) off the front of p.
func binaryField(p []byte) (field, rest []byte, ok bool) {
	if len(p) < 2 {
		return nil, nil, false
	}
	n := int(binary.BigEndian.Uint16(p))
	if n > len(p)-2 {
		return nil, nil, false
	}
	return p[2 : 2+n], p[2+n:], true
}

// interner keeps one string per topic seen lately, so that a message's
// topic costs no allocation: a gateway's devices use the same few topics
// over and over. It forgets them all once it holds maxTopics, or
// maxTopicBytes of them.
type interner struct {
	m     map[string]string
	bytes int
}

const (
	maxTopics     = 4096
	maxTopicBytes = 256 << 10
)

func (t *interner) get(b []byte) string {
	if s, ok := t.m[string(b)]; ok {
		return s
	}
	if t.m == nil || len(t.m) >= maxTopics || t.bytes+len(b) > maxTopicBytes {
		t.m, t.bytes = make(map[string]string), 0
	}
	s := string(b)
	t.m[s] = s
	t.bytes += len(s)
	return s
}
