package forward

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ferry-edge/ferry/buffer"
)

var updateEnvelopes = flag.Bool("update", false, "rewrite the golden envelopes in testdata/envelope")

// envelopeGoldenDir holds one file per case: the envelope and a newline.
const envelopeGoldenDir = "../testdata/envelope"

// envelopeCases are the golden envelopes, by file name.
func envelopeCases() map[string]*buffer.Record {
	at := time.Date(2026, 12, 1, 12, 0, 0, 120_000_000, time.FixedZone("CET", 3600)) // 11:00:00.12 UTC
	rec := func(payload string, qos byte) *buffer.Record {
		return &buffer.Record{Seq: 42, Topic: "sensors/dev-042/telemetry", Payload: []byte(payload), QoS: qos, ReceivedAt: at}
	}
	retained := rec(`{"online":true}`, 1)
	retained.Topic, retained.Retain = "sensors/dev-042/status", true
	v5 := rec(`{"cmd":"reboot","delay_s":5}`, 1)
	v5.Topic = "devices/dev-042/cmd"
	v5.ContentType = "application/json"
	v5.ResponseTopic = "devices/dev-042/reply"
	v5.CorrelationData = []byte{0x00, 0x01, 0xfe, 0xff, 'r', 'q', '-', '7'}
	v5.PayloadUTF8 = true
	v5.UserProperties = []buffer.Property{{Key: "site", Value: "plant-3"}, {Key: "tag", Value: "a"}, {Key: "tag", Value: "b"}, {Key: "note", Value: "line 1\n\"quoted\""}}
	unsynced := rec(`{"temp":21.5}`, 1)
	unsynced.ReceivedAt = time.Date(1970, 1, 1, 0, 2, 3, 4, time.UTC)
	unsynced.ClockUnsynced = true
	return map[string]*buffer.Record{
		"json_object.json":    rec(`{"device":"dev-042","temp":21.5,"hum":40.25,"ok":true,"tags":["a","b"]}`, 1),
		"json_array.json":     rec(`[21.5,21.7,21.6]`, 1),
		"json_number.json":    rec(`12345678901234567890.125e-3`, 1), // kept as written: no float64 rounding
		"json_string.json":    rec(`"on"`, 1),
		"json_spaced.json":    rec(" \r\n\t{\n  \"temp\": 21.5,\n  \"unit\": \"°C\",\n  \"note\": \"a \\\"b\\\" \\\\ c\\n\"\n}\n", 1), // compacted
		"text.json":           rec("temp=21.5 unit=°C\tstatus=\"ok\"\\ \x01\x1f\u2028 done\n", 1),
		"not_json_text.json":  rec(`{"temp":21.5`, 1),
		"binary.json":         rec("\x00\x01\x02\xff\xfe\x80 binary", 1),
		"json_bad_utf8.json":  rec("{\"name\":\"caf\xe9\"}", 1), // valid JSON to encoding/json, but Latin-1
		"empty.json":          rec("", 1),
		"v5_properties.json":  v5,
		"retained.json":       retained,
		"qos0.json":           rec(`{"temp":21.5}`, 0),
		"qos2.json":           rec(`{"temp":21.5}`, 2),
		"clock_unsynced.json": unsynced,
	}
}

// TestEnvelopeGolden pins the envelope of each case to a golden file in
// testdata/envelope (go test -run TestEnvelopeGolden -update rewrites them)
// and checks that each decodes back to the record.
func TestEnvelopeGolden(t *testing.T) {
	cases := envelopeCases()
	if *updateEnvelopes {
		if err := os.MkdirAll(envelopeGoldenDir, 0o755); err != nil {
			t.Fatal(err)
		}
		old, _ := filepath.Glob(filepath.Join(envelopeGoldenDir, "*.json"))
		for _, f := range old {
			if cases[filepath.Base(f)] == nil {
				if err := os.Remove(f); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for name, rec := range cases {
		t.Run(strings.TrimSuffix(name, ".json"), func(t *testing.T) {
			got := append(appendEnvelope(nil, rec, "gw-01"), '\n')
			golden := filepath.Join(envelopeGoldenDir, name)
			if *updateEnvelopes {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("envelope differs from %s (-update rewrites it)\ngot:  %s\nwant: %s", golden, got, want)
			}
			checkEnvelope(t, want[:len(want)-1], rec, "gw-01")
		})
	}
}

// TestEnvelopePayloadEncoding pins which payloads go which way.
func TestEnvelopePayloadEncoding(t *testing.T) {
	for payload, want := range map[string]string{
		``: envelopeString, ` `: envelopeString, `null`: envelopeJSON, `true`: envelopeJSON, `-1`: envelopeJSON,
		`0`: envelopeJSON, `1.5e3`: envelopeJSON, ` {} `: envelopeJSON, `[]`: envelopeJSON, `"x"`: envelopeJSON,
		`01`: envelopeString, `{"a":1}x`: envelopeString, `{'a':1}`: envelopeString, `NaN`: envelopeString,
		`nul`: envelopeString, "\"\xff\"": envelopeBase64, "\xef\xbb\xbf{}": envelopeString, // a BOM is not JSON
		"\x00": envelopeString, "\xc0\xaf": envelopeBase64,
	} {
		if got, _ := payloadEncoding([]byte(payload)); got != want {
			t.Errorf("payloadEncoding(%q) = %s, want %s", payload, got, want)
		}
	}
}

// validJSON is jsonScan.valid as a function.
func validJSON(b []byte) bool {
	s := jsonScan{b: b}
	return s.valid()
}

// TestValidJSON checks jsonScan against json.Valid on the edges of the
// grammar and of the nesting depth.
func TestValidJSON(t *testing.T) {
	deep := func(n int, open, close string) string { return strings.Repeat(open, n) + strings.Repeat(close, n) }
	for _, s := range []string{
		``, ` `, `{}`, `[]`, `{ }`, `[ ]`, `{"a":1}`, `{"a" : [1, {"b": null}] }`, `{"a":1,}`, `[1,]`, `[,1]`, `{,}`, `{"a"}`,
		`{"a":}`, `{1:2}`, `{"a":1 "b":2}`, `[1 2]`, `{"a":1]`, `[1}`, `[[]`, `[]]`, `{}{}`, `{} x`, "\t[\n]\r ",
		`0`, `-0`, `-`, `01`, `-01`, `1.`, `.1`, `1.5`, `1e`, `1e+`, `1E-7`, `1e07`, `+1`, `0x1`, `1.5e3.2`, `123456789012345678901234567890`,
		`"`, `""`, `"a`, `"\"`, `"\\"`, `"\/"`, `"\u00e9"`, `"\u00E"`, `"\u00eg"`, `"\x"`, "\"\t\"", "\"\x7f\"", "\"\xff\"",
		`true`, `tru`, `truex`, `false`, `null`, `nul`, `nulll`, `True`, `NaN`, `Infinity`,
		deep(maxJSONDepth, "[", "]"), deep(maxJSONDepth+1, "[", "]"), deep(200, `{"a":`, "}"), deep(maxJSONDepth, "[", ""),
		strings.Repeat(`{"a":[`, maxJSONDepth/2) + strings.Repeat(`]}`, maxJSONDepth/2), strings.Repeat(`[{"a":`, 100) + "1" + strings.Repeat(`}]`, 100),
	} {
		if got, want := validJSON([]byte(s)), json.Valid([]byte(s)); got != want {
			t.Errorf("validJSON(%.40q) = %v, json.Valid says %v", s, got, want)
		}
	}
}

// FuzzValidJSON checks jsonScan against json.Valid, and appendCompactJSON
// against json.Compact.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{"a":[1,-2.5e+3,"x\u00e9",true,false,null,{}]}`, ` [ ] `, "{ \"a b\" : \"c \\\" d\\\\\" ,\n\"e\":[ 1 ,\t2 ] }\r\n", `"\`, `01`, `{"a":1,}`, "[\"\x01\"]"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s := jsonScan{b: b}
		if got, want := s.valid(), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid says %v", b, got, want)
		}
		if !json.Valid(b) {
			return
		}
		var want bytes.Buffer
		if err := json.Compact(&want, b); err != nil {
			t.Fatal(err)
		}
		if got := appendCompactJSON(nil, b); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("appendCompactJSON(%q) = %q, json.Compact gives %q", b, got, want.Bytes())
		}
		if s.spaced != (want.Len() != len(b)) {
			t.Fatalf("%q: spaced %v, but json.Compact gives %q", b, s.spaced, want.Bytes())
		}
	})
}

// TestEnvelopeStrings checks the escaper against encoding/json on every
// character class: what decodes is what went in, and only the characters
// JSON needs (plus U+2028, U+2029) are escaped.
func TestEnvelopeStrings(t *testing.T) {
	var all strings.Builder
	for r := rune(0); r < 0x3000; r++ {
		all.WriteRune(r)
	}
	for _, s := range []string{"", "plain", `"`, `\`, `\b\f\u003c`, "<>&", "\b\f", "\u2028\u2029", "\xe2\x80\xa7", "\U0001F600", all.String()} {
		out := appendJSONString(nil, s)
		var std bytes.Buffer
		enc := json.NewEncoder(&std)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, bytes.TrimSuffix(std.Bytes(), []byte("\n"))) {
			t.Errorf("appendJSONString(%q) = %s, encoding/json %s", s, out, std.Bytes())
		}
		var back string
		if err := json.Unmarshal(out, &back); err != nil || back != s {
			t.Errorf("appendJSONString(%q) = %s: decodes to %q, %v", s, out, back, err)
		}
	}
	// Cut short before the end: no escape, no read past it.
	for _, s := range []string{"\xe2", "\xe2\x80", "a\xe2\x80"} {
		if got, want := string(appendJSONString(nil, s)), `"`+s+`"`; got != want {
			t.Errorf("appendJSONString(%q) = %q, want %q", s, got, want)
		}
	}
	if got, want := string(appendJSONText(nil, "a\xffb\xc0\xafc")), `"a`+"\uFFFD"+`b`+"\uFFFD"+`c"`; got != want {
		t.Errorf("appendJSONText of invalid UTF-8 = %s, want %s", got, want)
	}
}

// TestEnvelopeTime checks received_at against time.Format over the years
// the buffer can hold, and that it keeps the fixed width.
func TestEnvelopeTime(t *testing.T) {
	for _, at := range []time.Time{
		time.Unix(0, 0), time.Unix(0, 1), time.Unix(0, 999_999_999), time.Date(2026, 2, 28, 23, 59, 59, 100, time.FixedZone("", -5*3600)),
		time.Unix(0, -1<<63), time.Unix(0, 1<<63-1), {}, time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC),
	} {
		got := string(appendTime(nil, at))
		if want := at.UTC().Format(envelopeTime); got != want || len(got) != 30 {
			t.Errorf("appendTime(%v) = %s, want %s (30 characters)", at, got, want)
		}
	}
	if got := string(appendTime(nil, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC))); got != "10000-01-01T00:00:00.000000000Z" {
		t.Errorf("appendTime(year 10000) = %s", got)
	}
}

// TestEnvelopeAppends checks that appendEnvelope appends, leaving dst's
// bytes alone, and allocates nothing when dst has room.
func TestEnvelopeAppends(t *testing.T) {
	rec := envelopeCases()["v5_properties.json"]
	want := appendEnvelope(nil, rec, "gw-01")
	got := appendEnvelope([]byte("prefix"), rec, "gw-01")
	if string(got) != "prefix"+string(want) {
		t.Errorf("appendEnvelope after a prefix = %s", got)
	}
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { buf = appendEnvelope(buf[:0], rec, "gw-01") }); n != 0 {
		t.Errorf("appendEnvelope into a large enough buffer: %v allocations, want 0", n)
	}
	// Into nil: one allocation, of enough.
	for name, rec := range envelopeCases() {
		env := appendEnvelope(nil, rec, "gw-01")
		enc, _ := payloadEncoding(rec.Payload)
		if size := envelopeSize(rec, "gw-01", enc); size < len(env) {
			t.Errorf("envelope of %s: %d bytes, more than the %d reserved", name, len(env), size)
		}
	}
}

// FuzzEnvelope checks that any record gives valid UTF-8 JSON that decodes
// back to the record.
func FuzzEnvelope(f *testing.F) {
	f.Add("sensors/a", []byte(`{"t":1}`), "application/json", "reply/a", []byte("id"), "k", "v", byte(1), int64(0), byte(0))
	f.Add("a/\"b\"\\c", []byte("text\n\x00"), "", "", []byte(nil), "k\u2028", "\xff", byte(0), int64(1796000000123456789), byte(7))
	f.Add("", []byte("\xff\xfe"), "t\xe2\x80", "\x1f", []byte{0}, "", "", byte(2), int64(-1), byte(3))
	f.Add("x", []byte(" [1, 2.5e10, \"\\u00e9\"] "), "", "", []byte(nil), "dup", "dup", byte(1), int64(1<<62), byte(1))
	f.Add("x", []byte(""), "", "", []byte(nil), "", "", byte(0), int64(0), byte(0))
	f.Fuzz(func(t *testing.T, topic string, payload []byte, contentType, responseTopic string, corr []byte, key, value string, qos byte, nanos int64, flags byte) {
		rec := &buffer.Record{
			Topic: topic, Payload: payload, QoS: qos % 3, ReceivedAt: time.Unix(0, nanos),
			Retain: flags&1 != 0, PayloadUTF8: flags&2 != 0, ClockUnsynced: flags&4 != 0,
			ContentType: contentType, ResponseTopic: responseTopic, CorrelationData: corr,
		}
		if flags&8 != 0 {
			rec.UserProperties = []buffer.Property{{Key: key, Value: value}, {Key: key, Value: topic}}
		}
		checkEnvelope(t, appendEnvelope(nil, rec, topic), rec, topic)
	})
}

// envelopeFields is the envelope decoded. Pointers tell absent from zero.
type envelopeFields struct {
	Topic           *string           `json:"topic"`
	GatewayID       *string           `json:"gateway_id"`
	ReceivedAt      *string           `json:"received_at"`
	QoS             *byte             `json:"qos"`
	Retain          *bool             `json:"retain"`
	Clock           *string           `json:"clock"`
	ContentType     *string           `json:"content_type"`
	ResponseTopic   *string           `json:"response_topic"`
	CorrelationData *[]byte           `json:"correlation_data"` // base64, as encoding/json decodes []byte
	PayloadFormat   *string           `json:"payload_format"`
	UserProperties  []buffer.Property `json:"user_properties"`
	PayloadEncoding *string           `json:"payload_encoding"`
	Payload         json.RawMessage   `json:"payload"`
}

// envelopeOrder is the order of the envelope's fields.
var envelopeOrder = []string{"topic", "gateway_id", "received_at", "qos", "retain", "clock", "content_type",
	"response_topic", "correlation_data", "payload_format", "user_properties", "payload_encoding", "payload"}

// checkEnvelope checks that env is valid UTF-8 JSON, its fields in order,
// without duplicates or unknown fields, on one line, and that it decodes
// back to rec: the payload byte for byte (a JSON payload as json.Compact
// gives it), the strings as sent where they were valid UTF-8.
func checkEnvelope(t *testing.T, env []byte, rec *buffer.Record, gatewayID string) {
	t.Helper()
	if !json.Valid(env) || !utf8.Valid(env) {
		t.Fatalf("envelope is not valid UTF-8 JSON: %q", env)
	}
	if bytes.ContainsAny(env, "\n\r") {
		t.Fatalf("envelope is more than one line: %q", env)
	}
	// The fields, in order, each once.
	dec := json.NewDecoder(bytes.NewReader(env))
	var keys []string
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("envelope does not open an object: %v %v", tok, err)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	last := -1
	for _, k := range keys {
		i := slices.Index(envelopeOrder, k)
		if i <= last {
			t.Fatalf("envelope fields %q: unknown, repeated or out of order at %q", keys, k)
		}
		last = i
	}

	var e envelopeFields
	strict := json.NewDecoder(bytes.NewReader(env))
	strict.DisallowUnknownFields()
	if err := strict.Decode(&e); err != nil {
		t.Fatalf("decode envelope %s: %v", env, err)
	}
	if e.Topic == nil || e.GatewayID == nil || e.ReceivedAt == nil || e.QoS == nil || e.Retain == nil || e.PayloadEncoding == nil || e.Payload == nil {
		t.Fatalf("envelope lacks a core field: %s", env)
	}
	text := func(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
	optional := func(field string, got *string, want string) {
		t.Helper()
		switch {
		case want == "" && got != nil:
			t.Errorf("%s = %q, want it absent", field, *got)
		case want != "" && (got == nil || *got != want):
			t.Errorf("%s = %v, want %q", field, got, want)
		}
	}
	if *e.Topic != text(rec.Topic) || *e.GatewayID != text(gatewayID) || *e.QoS != rec.QoS || *e.Retain != rec.Retain {
		t.Errorf("envelope %s: topic, gateway_id, qos, retain differ from the record", env)
	}
	at, err := time.Parse(time.RFC3339Nano, *e.ReceivedAt)
	if y := rec.ReceivedAt.UTC().Year(); y >= 0 && y <= 9999 && (err != nil || !at.Equal(rec.ReceivedAt) || len(*e.ReceivedAt) != 30 || !strings.HasSuffix(*e.ReceivedAt, "Z")) {
		t.Errorf("received_at = %s (%v), want %s in 30 characters", *e.ReceivedAt, err, rec.ReceivedAt.UTC().Format(envelopeTime))
	}
	optional("clock", e.Clock, map[bool]string{true: "unsynced"}[rec.ClockUnsynced])
	optional("content_type", e.ContentType, text(rec.ContentType))
	optional("response_topic", e.ResponseTopic, text(rec.ResponseTopic))
	optional("payload_format", e.PayloadFormat, map[bool]string{true: "utf-8"}[rec.PayloadUTF8])
	if len(rec.CorrelationData) == 0 && e.CorrelationData != nil || len(rec.CorrelationData) > 0 && (e.CorrelationData == nil || !bytes.Equal(*e.CorrelationData, rec.CorrelationData)) {
		t.Errorf("correlation_data = %v, want %x", e.CorrelationData, rec.CorrelationData)
	}
	var props []buffer.Property
	for _, p := range rec.UserProperties {
		props = append(props, buffer.Property{Key: text(p.Key), Value: text(p.Value)})
	}
	if !slices.Equal(e.UserProperties, props) {
		t.Errorf("user_properties = %q, want %q", e.UserProperties, props)
	}

	if want, _ := payloadEncoding(rec.Payload); *e.PayloadEncoding != want {
		t.Fatalf("payload_encoding %s, want %s", *e.PayloadEncoding, want)
	}
	var payload []byte
	switch *e.PayloadEncoding {
	case "json":
		var want bytes.Buffer
		if err := json.Compact(&want, rec.Payload); err != nil {
			t.Fatalf("JSON payload %q: %v", rec.Payload, err)
		}
		if !bytes.Equal(e.Payload, want.Bytes()) {
			t.Fatalf("JSON payload %s, want %s compacted: %s", e.Payload, rec.Payload, want.Bytes())
		}
		return
	case "string":
		var s string
		if err := json.Unmarshal(e.Payload, &s); err != nil {
			t.Fatalf("string payload %s: %v", e.Payload, err)
		}
		payload = []byte(s)
	case "base64":
		var s string
		if err := json.Unmarshal(e.Payload, &s); err != nil {
			t.Fatalf("base64 payload %s: %v", e.Payload, err)
		}
		if payload, err = base64.StdEncoding.DecodeString(s); err != nil {
			t.Fatalf("base64 payload %s: %v", s, err)
		}
	default:
		t.Fatalf("payload_encoding %q", *e.PayloadEncoding)
	}
	if !bytes.Equal(payload, rec.Payload) {
		t.Fatalf("payload (%s) decodes to %q, want %q", *e.PayloadEncoding, payload, rec.Payload)
	}
}

// BenchmarkEnvelope measures the envelope of a record of 200 bytes of
// JSON telemetry (as BenchmarkDrain sends), of the same bytes as text (not
// JSON: a string to escape) and as binary (base64), into a reused buffer.
//
//	go test -run '^$' -bench Envelope ./forward
func BenchmarkEnvelope(b *testing.B) {
	jsonRec := benchRecord(7)
	textRec := *jsonRec
	textRec.Payload = append([]byte("not json: "), jsonRec.Payload[10:]...)
	binRec := *jsonRec
	binRec.Payload = append([]byte{0xff}, jsonRec.Payload[1:]...)
	for _, c := range []struct {
		name string
		rec  *buffer.Record
	}{{"json", jsonRec}, {"text", &textRec}, {"binary", &binRec}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.rec.Payload)))
			var buf []byte
			for b.Loop() {
				buf = appendEnvelope(buf[:0], c.rec, "gw-01")
			}
			b.ReportMetric(float64(len(buf)), "envelope_bytes")
		})
	}
}

// BenchmarkValidJSON compares jsonScan with json.Valid on the payload of
// BenchmarkEnvelope.
func BenchmarkValidJSON(b *testing.B) {
	p := benchRecord(7).Payload
	for _, c := range []struct {
		name  string
		valid func([]byte) bool
	}{{"validJSON", validJSON}, {"json.Valid", json.Valid}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(p)))
			for b.Loop() {
				if !c.valid(p) {
					b.Fatal("invalid")
				}
			}
		})
	}
}
