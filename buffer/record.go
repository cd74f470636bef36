package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// Record is one event held in the buffer: an MQTT message as ferry received
// it, with the properties worth keeping downstream. The buffer assigns Seq;
// everything else is the caller's.
type Record struct {
	// Seq is the record's position in the buffer, assigned on append.
	// Sequence numbers only grow, across restarts too.
	Seq uint64
	// Topic is the MQTT topic the message was published on.
	Topic string
	// Payload is the message body, unchanged.
	Payload []byte
	// QoS is the quality of service the message was delivered with (0, 1, 2).
	QoS byte
	// Retain reports whether the message was a retained message.
	Retain bool
	// ReceivedAt is when ferry received the message: the event time that
	// survives an outage.
	ReceivedAt time.Time

	// MQTT v5 properties worth keeping. Empty means absent.
	ContentType     string
	ResponseTopic   string
	CorrelationData []byte
	// PayloadUTF8 is the payload format indicator (true: UTF-8 text).
	PayloadUTF8    bool
	UserProperties []Property

	// ClockUnsynced reports that the system clock was not synchronized
	// (the kernel said so) when the record was received: ReceivedAt may
	// be far off.
	ClockUnsynced bool
}

// Property is an MQTT v5 user property. Keys may repeat.
type Property struct {
	Key, Value string
}

// Encoding, version 1. All lengths are uvarints.
//
//	version(1) flags(1) qos(1) received_at_unix_nano(varint)
//	topic content_type response_topic correlation_data
//	n_user_properties { key value }
//	payload
//	crc32c(4, big endian) of everything before it
const (
	encodingV1 = 1

	flagRetain        = 1 << 0
	flagPayloadUTF8   = 1 << 1
	flagClockUnsynced = 1 << 2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is returned (wrapped) for a stored record that cannot be decoded.
var ErrCorrupt = errors.New("corrupt record")

// appendEncoded appends the encoding of r to dst.
func appendEncoded(dst []byte, r *Record) []byte {
	start := len(dst)
	var flags byte
	if r.Retain {
		flags |= flagRetain
	}
	if r.PayloadUTF8 {
		flags |= flagPayloadUTF8
	}
	if r.ClockUnsynced {
		flags |= flagClockUnsynced
	}
	dst = append(dst, encodingV1, flags, r.QoS)
	dst = binary.AppendVarint(dst, r.ReceivedAt.UnixNano())
	dst = appendBytes(dst, []byte(r.Topic))
	dst = appendBytes(dst, []byte(r.ContentType))
	dst = appendBytes(dst, []byte(r.ResponseTopic))
	dst = appendBytes(dst, r.CorrelationData)
	dst = binary.AppendUvarint(dst, uint64(len(r.UserProperties)))
	for _, p := range r.UserProperties {
		dst = appendBytes(dst, []byte(p.Key))
		dst = appendBytes(dst, []byte(p.Value))
	}
	dst = appendBytes(dst, r.Payload)
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// decode parses an encoded record. It copies everything it keeps, so buf may
// be memory that is only valid inside a transaction.
func decode(buf []byte) (Record, error) { return decodeWith(buf, nil) }

// decodeWith is decode that copies the payload into a, if not nil.
func decodeWith(buf []byte, a *arena) (Record, error) {
	var r Record
	if len(buf) < 3+1+4 {
		return r, fmt.Errorf("%w: %d bytes is too short", ErrCorrupt, len(buf))
	}
	body, sum := buf[:len(buf)-4], binary.BigEndian.Uint32(buf[len(buf)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return r, fmt.Errorf("%w: checksum %08x, want %08x", ErrCorrupt, got, sum)
	}
	if body[0] != encodingV1 {
		return r, fmt.Errorf("%w: unknown encoding version %d", ErrCorrupt, body[0])
	}
	d := decoder{buf: body[3:]}
	r.Retain = body[1]&flagRetain != 0
	r.PayloadUTF8 = body[1]&flagPayloadUTF8 != 0
	r.ClockUnsynced = body[1]&flagClockUnsynced != 0
	r.QoS = body[2]
	r.ReceivedAt = time.Unix(0, d.varint())
	r.Topic = string(d.bytes())
	r.ContentType = string(d.bytes())
	r.ResponseTopic = string(d.bytes())
	r.CorrelationData = d.copyBytes()
	n := d.uvarint()
	if n > uint64(len(d.buf)) { // each property takes at least two bytes
		d.fail()
	}
	if n > 0 && d.err == nil {
		r.UserProperties = make([]Property, n)
		for i := range r.UserProperties {
			r.UserProperties[i] = Property{Key: string(d.bytes()), Value: string(d.bytes())}
		}
	}
	r.Payload = a.copy(d.bytes())
	if r.Payload == nil && d.err == nil {
		r.Payload = []byte{}
	}
	if d.err == nil && len(d.buf) != 0 {
		return r, fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(d.buf))
	}
	if d.err != nil {
		return r, d.err
	}
	return r, nil
}

type decoder struct {
	buf []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated field", ErrCorrupt)
	}
	d.buf = nil
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.buf)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.buf)) {
		d.fail()
		return nil
	}
	b := d.buf[:n]
	d.buf = d.buf[n:]
	return b
}

func (d *decoder) copyBytes() []byte {
	b := d.bytes()
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// arena copies the payloads of one Read into one shared block, sized by
// the caller for what it copies: one allocation for many records. The
// block lives as long as any of its payloads, so a caller that keeps a few
// records of a Read and drops the rest should copy those few out. Without
// a block (nil arena, or when the block is used up) each payload is copied
// on its own.
type arena struct{ block []byte }

func (a *arena) copy(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	if a == nil || len(b) > cap(a.block)-len(a.block) {
		return append([]byte(nil), b...)
	}
	start := len(a.block)
	a.block = append(a.block, b...)
	return a.block[start:len(a.block):len(a.block)] // capped: an append by the caller cannot reach the next payload
}
