package forward

import (
	"encoding/base64"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ferry-edge/ferry/buffer"
)

// envelopeTime is the layout of received_at: fixed width, so consumers
// parse one format (time.RFC3339Nano drops trailing zeros).
const envelopeTime = "2006-01-02T15:04:05.000000000Z07:00"

// Payload encodings in an envelope.
const (
	envelopeJSON   = "json"
	envelopeString = "string"
	envelopeBase64 = "base64"
)

// appendEnvelope appends to dst the JSON envelope of rec, received by the
// gateway gatewayID, and returns the extended buffer. It allocates only when
// dst is too small, then (unless its strings have many characters to
// escape) once.
//
// The envelope is the Kafka record value of a route with `format:
// envelope`: one JSON object that describes the MQTT message and holds its
// payload. Its field names are a contract with the consumers in
// the data centre: fields may be added, none is renamed or changes meaning.
//
//	topic             string  the MQTT topic
//	gateway_id        string  the gateway that received the message
//	received_at       string  when ferry received it: RFC 3339 in UTC with
//	                          nine fraction digits, always 30 characters
//	qos               number  0, 1 or 2
//	retain            bool    the message was a retained message
//	clock             string  "unsynced" when the gateway's clock was not
//	                          synchronized (received_at may be far off)
//	content_type      string  MQTT v5 content type
//	response_topic    string  MQTT v5 response topic
//	correlation_data  string  MQTT v5 correlation data, base64 (RFC 4648 §4, padded)
//	payload_format    string  "utf-8" when the publisher declared the
//	                          payload UTF-8 (payload format indicator 1)
//	user_properties   array   MQTT v5 user properties, {"key","value"}
//	                          objects in the order sent, duplicates kept
//	payload_encoding  string  "json", "string" or "base64": how payload holds the bytes
//	payload           any     the payload (see below)
//
// The first five and the last two are always present, in this order; the
// others only when the message had them (never as null). The payload is
// embedded as JSON when it is valid UTF-8 and valid JSON: its text as
// json.Compact gives it, the whitespace between and around its tokens
// removed and all else byte for byte (numbers keep their digits, objects
// their key order and duplicate keys, strings their escapes). Else it is a
// JSON string when it is valid UTF-8 (an empty payload is "payload":""
// with encoding "string"), else base64 (RFC 4648 §4, padded). The envelope
// is one line: it holds no newline. MQTT strings are UTF-8 by the
// protocol; should one not be, each run of invalid bytes is written as
// U+FFFD.
func appendEnvelope(dst []byte, rec *buffer.Record, gatewayID string) []byte {
	enc, spaced := payloadEncoding(rec.Payload)
	dst = slices.Grow(dst, envelopeSize(rec, gatewayID, enc))

	dst = append(dst, `{"topic":`...)
	dst = appendJSONText(dst, rec.Topic)
	dst = append(dst, `,"gateway_id":`...)
	dst = appendJSONText(dst, gatewayID)
	dst = append(dst, `,"received_at":"`...)
	dst = appendTime(dst, rec.ReceivedAt)
	dst = append(dst, `","qos":`...)
	dst = strconv.AppendUint(dst, uint64(rec.QoS), 10)
	dst = append(dst, `,"retain":`...)
	dst = strconv.AppendBool(dst, rec.Retain)
	if rec.ClockUnsynced {
		dst = append(dst, `,"clock":"unsynced"`...)
	}
	if rec.ContentType != "" {
		dst = append(dst, `,"content_type":`...)
		dst = appendJSONText(dst, rec.ContentType)
	}
	if rec.ResponseTopic != "" {
		dst = append(dst, `,"response_topic":`...)
		dst = appendJSONText(dst, rec.ResponseTopic)
	}
	if len(rec.CorrelationData) > 0 {
		dst = append(dst, `,"correlation_data":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, rec.CorrelationData)
		dst = append(dst, '"')
	}
	if rec.PayloadUTF8 {
		dst = append(dst, `,"payload_format":"utf-8"`...)
	}
	if len(rec.UserProperties) > 0 {
		dst = append(dst, `,"user_properties":[`...)
		for i, p := range rec.UserProperties {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"key":`...)
			dst = appendJSONText(dst, p.Key)
			dst = append(dst, `,"value":`...)
			dst = appendJSONText(dst, p.Value)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	dst = append(dst, `,"payload_encoding":"`...)
	dst = append(dst, enc...)
	dst = append(dst, `","payload":`...)
	switch enc {
	case envelopeJSON:
		if spaced {
			dst = appendCompactJSON(dst, rec.Payload)
		} else {
			dst = append(dst, rec.Payload...)
		}
	case envelopeString:
		dst = appendJSONString(dst, rec.Payload)
	default:
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, rec.Payload)
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// payloadEncoding chooses how an envelope holds payload, and for JSON
// whether it has whitespace to remove.
func payloadEncoding(payload []byte) (enc string, spaced bool) {
	if !utf8.Valid(payload) { // jsonScan, as json.Valid, takes invalid UTF-8 in strings
		return envelopeBase64, false
	}
	if s := (jsonScan{b: payload}); s.valid() {
		return envelopeJSON, s.spaced
	}
	return envelopeString, false
}

// envelopeSize is a little more than the length of rec's envelope, unless
// its strings have many characters to escape.
func envelopeSize(rec *buffer.Record, gatewayID, enc string) int {
	n := 300 + len(rec.Topic) + len(gatewayID) + len(rec.ContentType) + len(rec.ResponseTopic) +
		base64.StdEncoding.EncodedLen(len(rec.CorrelationData))
	for _, p := range rec.UserProperties {
		n += 24 + len(p.Key) + len(p.Value)
	}
	switch enc {
	case envelopeBase64:
		return n + base64.StdEncoding.EncodedLen(len(rec.Payload))
	case envelopeString:
		return n + len(rec.Payload) + len(rec.Payload)/4
	}
	return n + len(rec.Payload)
}

// appendTime appends t in UTC in the layout envelopeTime.
func appendTime(dst []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(dst, envelopeTime)
	}
	hour, minute, sec := t.Clock()
	dst = appendDigits(dst, year, 4)
	dst = append(dst, '-')
	dst = appendDigits(dst, int(month), 2)
	dst = append(dst, '-')
	dst = appendDigits(dst, day, 2)
	dst = append(dst, 'T')
	dst = appendDigits(dst, hour, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, minute, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, sec, 2)
	dst = append(dst, '.')
	dst = appendDigits(dst, t.Nanosecond(), 9)
	return append(dst, 'Z')
}

// appendDigits appends v, at least 0, as exactly width decimal digits.
func appendDigits(dst []byte, v, width int) []byte {
	dst = append(dst, "000000000"[:width]...)
	for i := len(dst) - 1; v > 0 && i >= len(dst)-width; i-- {
		dst[i] = byte('0' + v%10)
		v /= 10
	}
	return dst
}

// appendJSONText appends s as a JSON string; each run of bytes of s that
// is not valid UTF-8 becomes U+FFFD.
func appendJSONText(dst []byte, s string) []byte {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return appendJSONString(dst, s)
}

// appendJSONString appends s, which must be valid UTF-8, as a JSON string.
// It escapes what JSON requires (", \ and the control characters below
// U+0020) and, as encoding/json does, U+2028 and U+2029, which JavaScript
// does not take in a string literal: its output is encoding/json's with
// SetEscapeHTML(false).
func appendJSONString[T string | []byte](dst []byte, s T) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c != 0xE2 {
			continue
		}
		var esc string
		switch {
		case c == 0xE2: // U+2028 is E2 80 A8, U+2029 E2 80 A9
			if i+2 >= len(s) || s[i+1] != 0x80 || s[i+2]&^1 != 0xA8 {
				continue
			}
			esc = `\u2028`
			if s[i+2] == 0xA9 {
				esc = `\u2029`
			}
		case c == '"':
			esc = `\"`
		case c == '\\':
			esc = `\\`
		case c == '\n':
			esc = `\n`
		case c == '\r':
			esc = `\r`
		case c == '\t':
			esc = `\t`
		case c == '\b':
			esc = `\b`
		case c == '\f':
			esc = `\f`
		default:
			esc = controlEscapes[c]
		}
		dst = append(dst, s[start:i]...)
		dst = append(dst, esc...)
		if c == 0xE2 {
			i += 2
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// controlEscapes holds \u00XX for the bytes below 0x20.
var controlEscapes = func() (e [0x20]string) {
	const hex = "0123456789abcdef"
	for c := range e {
		e[c] = `\u00` + string(hex[c>>4]) + string(hex[c&0xF])
	}
	return e
}()

// maxJSONDepth is the deepest nesting jsonScan accepts: encoding/json's.
const maxJSONDepth = 10000

// jsonScan checks that b is one JSON value.
type jsonScan struct {
	b      []byte
	spaced bool // whitespace was seen between or around the tokens
}

// valid reports whether s.b is one JSON value (RFC 8259), with whitespace
// around it or not. It gives json.Valid's answer, about twice as fast and
// without json.Valid's allocations for an invalid value; as json.Valid, it
// does not check UTF-8.
func (s *jsonScan) valid() bool {
	b := s.b
	var small [2]uint64
	objects := small[:] // bit d set: nesting level d+1 is an object, not an array
	depth := 0
	i := s.space(0)
	for {
		// A value starts at i.
		if i >= len(b) {
			return false
		}
		switch c := b[i]; c {
		case '{', '[':
			if depth == maxJSONDepth {
				return false
			}
			if depth == len(objects)*64 {
				objects = append(objects, 0)
			}
			if c == '{' {
				objects[depth/64] |= 1 << (depth % 64)
			} else {
				objects[depth/64] &^= 1 << (depth % 64)
			}
			depth++
			i = s.space(i + 1)
			if i < len(b) && b[i] == c+2 { // '}' is '{'+2, ']' is '['+2
				i++
				depth--
				break
			}
			if c == '{' {
				if i = s.key(i); i < 0 {
					return false
				}
			}
			continue
		case '"':
			i = s.str(i)
		case 't':
			i = s.literal(i, "true")
		case 'f':
			i = s.literal(i, "false")
		case 'n':
			i = s.literal(i, "null")
		default:
			i = s.number(i)
		}
		if i < 0 {
			return false
		}
		// After a value: close what ends here, then expect the next value.
		for {
			i = s.space(i)
			if depth == 0 {
				return i == len(b)
			}
			if i >= len(b) {
				return false
			}
			object := objects[(depth-1)/64]&(1<<((depth-1)%64)) != 0
			if b[i] == ',' {
				i = s.space(i + 1)
				if object {
					if i = s.key(i); i < 0 {
						return false
					}
				}
				break
			}
			if object && b[i] != '}' || !object && b[i] != ']' {
				return false
			}
			i++
			depth--
		}
	}
}

// space returns the index of the first byte from i on that is not JSON
// whitespace, or len(s.b).
func (s *jsonScan) space(i int) int {
	j := i
	for j < len(s.b) && (s.b[j] == ' ' || s.b[j] == '\n' || s.b[j] == '\r' || s.b[j] == '\t') {
		j++
	}
	if j != i {
		s.spaced = true
	}
	return j
}

// key scans an object's key and its colon from i, and returns the index
// where the value starts, or -1.
func (s *jsonScan) key(i int) int {
	if i >= len(s.b) || s.b[i] != '"' {
		return -1
	}
	if i = s.str(i); i < 0 {
		return -1
	}
	i = s.space(i)
	if i >= len(s.b) || s.b[i] != ':' {
		return -1
	}
	return s.space(i + 1)
}

// str scans the string whose quote is at i and returns the index after
// its closing quote, or -1.
func (s *jsonScan) str(i int) int {
	b := s.b
	for i++; i < len(b); i++ {
		c := b[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		switch c {
		case '"':
			return i + 1
		case '\\':
			i++
			if i >= len(b) {
				return -1
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(b) {
					return -1
				}
				for _, h := range b[i+1 : i+5] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return -1
					}
				}
				i += 4
			default:
				return -1
			}
		default: // a control character
			return -1
		}
	}
	return -1
}

// number scans the number at i and returns the index after it, or -1.
func (s *jsonScan) number(i int) int {
	b := s.b
	if b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return -1
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		i = skipDigits(b, i+1)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		if i++; i >= len(b) || b[i] < '0' || b[i] > '9' {
			return -1
		}
		i = skipDigits(b, i+1)
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		if i++; i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return -1
		}
		i = skipDigits(b, i+1)
	}
	return i
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

// literal scans lit at i and returns the index after it, or -1.
func (s *jsonScan) literal(i int, lit string) int {
	if len(s.b)-i < len(lit) || string(s.b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}

// appendCompactJSON appends v, valid JSON, without the whitespace between
// and around its tokens, as json.Compact does.
func appendCompactJSON(dst, v []byte) []byte {
	inString := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case inString:
			if c == '\\' { // an escape: the next byte is not the string's end
				dst = append(dst, c)
				i++
				c = v[i]
			} else if c == '"' {
				inString = false
			}
		case c == ' ' || c == '\n' || c == '\r' || c == '\t':
			continue
		case c == '"':
			inString = true
		}
		dst = append(dst, c)
	}
	return dst
}
