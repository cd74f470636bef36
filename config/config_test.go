package config

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden .err files in testdata/config/bad")

// testEnv is an environment with only the given variables and host name
// "testhost".
func testEnv(vars ...string) Env {
	m := map[string]string{}
	for i := 0; i+1 < len(vars); i += 2 {
		m[vars[i]] = vars[i+1]
	}
	return Env{
		Lookup:   func(k string) (string, bool) { v, ok := m[k]; return v, ok },
		Hostname: func() (string, error) { return "testhost", nil },
		IntSize:  64, // the same answers on 32-bit test machines
	}
}

func mustParse(t *testing.T, yaml string, env Env) *Config {
	t.Helper()
	c, err := Parse("test.yaml", []byte(yaml), env)
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	return c
}

const minimal = `
mqtt:
  url: tcp://127.0.0.1:1883
  subscriptions:
    - filter: sensors/#
forward:
  kafka:
    brokers: [127.0.0.1:9092]
  routes:
    - match: sensors/#
      topic: telemetry
`

func TestExample(t *testing.T) {
	c, err := Load("../testdata/config/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) > 0 {
		t.Errorf("warnings: %q", c.Warnings)
	}
	if c.GatewayID != "gw-01" || c.Forward.Routes[0].Key != "{device}" || c.Forward.Kafka.Brokers[0] != "127.0.0.1:9092" {
		t.Errorf("unexpected config: %+v", c)
	}
}

func TestDefaults(t *testing.T) {
	c := mustParse(t, minimal, testEnv())
	want := &Config{
		GatewayID: "testhost",
		Log:       Log{Level: "info", Format: "text"},
		MQTT: Connections{{
			Name:            "127.0.0.1:1883",
			URL:             "tcp://127.0.0.1:1883",
			ClientID:        "ferry-testhost",
			KeepAlive:       30 * time.Second,
			SessionExpiry:   24 * time.Hour,
			ConnectTimeout:  10 * time.Second,
			ReceiveMaximum:  1000,
			MaxPayloadBytes: 1 << 20,
			Subscriptions:   []Subscription{{Filter: "sensors/#", QoS: 1, RetainHandling: 1}},
		}},
		Buffer: Buffer{Path: "./ferry-buffer.db", Sync: "delayed", WriteDelay: 100 * time.Millisecond, SyncInterval: 100 * time.Millisecond, MaxBytes: 1 << 30, MaxDeadLetterBytes: 64 << 20, MaxAge: 7 * 24 * time.Hour, WhenFull: "drop_oldest", OnCorrupt: "move_aside"},
		Forward: Forward{
			Kafka: Kafka{
				Brokers:            []string{"127.0.0.1:9092"},
				ClientID:           "ferry-testhost",
				Compression:        "zstd",
				MaxBatchBytes:      1 << 20,
				MaxBufferedRecords: 20000,
				MaxBufferedBytes:   16 << 20,
				DialTimeout:        10 * time.Second,
			},
			Routes:              []Route{{Match: "sensors/#", Topic: "telemetry", Format: FormatRaw}},
			StatusTopic:         "ferry.status",
			StatusInterval:      time.Minute,
			UnknownTopicTimeout: time.Minute,
			LateAfter:           time.Minute,
		},
		Admin: Admin{Listen: "127.0.0.1:9464"},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}

	// STATE_DIRECTORY, as systemd sets it, may list several directories.
	c = mustParse(t, minimal, testEnv("STATE_DIRECTORY", "/var/lib/ferry:/var/lib/other"))
	if c.Buffer.Path != "/var/lib/ferry/buffer.db" {
		t.Errorf("Buffer.Path = %q with STATE_DIRECTORY set", c.Buffer.Path)
	}

	// An explicit zero is kept (and validated), a null is a default.
	c = mustParse(t, strings.Replace(minimal, "[127.0.0.1:9092]\n", "[127.0.0.1:9092]\n    linger: 0s\n    max_buffered_records:\n", 1), testEnv())
	if c.Forward.Kafka.MaxBufferedRecords != 20000 || c.Forward.Kafka.Linger != 0 {
		t.Errorf("Kafka = %+v", c.Forward.Kafka)
	}
	c = mustParse(t, strings.Replace(minimal, "- filter: sensors/#", "- {filter: sensors/#, qos: 0}", 1), testEnv())
	if c.MQTT[0].Subscriptions[0].QoS != 0 {
		t.Errorf("explicit qos 0 became %d", c.MQTT[0].Subscriptions[0].QoS)
	}
	_, err := Parse("test.yaml", []byte(strings.Replace(minimal, "mqtt:\n", "mqtt:\n  keep_alive: 0s\n", 1)), testEnv())
	if err == nil || !strings.Contains(err.Error(), "test.yaml:3:15: mqtt.keep_alive: must be from 1s to 65535s, got 0s") {
		t.Errorf("explicit keep_alive 0s: %v", err)
	}

	env := testEnv()
	env.Hostname = func() (string, error) { return "", errors.New("no uts namespace") }
	_, err = Parse("test.yaml", []byte(minimal), env)
	if err == nil || err.Error() != "test.yaml: gateway_id: not set, and the host name is unavailable to default to (no uts namespace)" {
		t.Errorf("without host name: %v", err)
	}
}

func TestExpand(t *testing.T) {
	env := testEnv("HOST", "broker", "PORT", "8883", "EMPTY", "", "RM", "250", "KA", "1m", "PW", "s3cr$t")
	tests := []struct {
		in, want string // want is the decoded mqtt.username; ! marks an error
	}{
		{"plain", "plain"},
		{"${HOST}", "broker"},
		{"${HOST}:${PORT}", "broker:8883"},
		{"x${HOST}y", "xbrokery"},
		{"${UNSET:-fallback}", "fallback"},
		{"${EMPTY:-fallback}", "fallback"},
		{"${HOST:-fallback}", "broker"},
		{"${EMPTY}", ""},
		{"${UNSET:-}", ""},
		{"$$HOST", "$HOST"},
		{"$${HOST}", "${HOST}"},
		{"a$b$", "a$b$"},
		{"${PW}", "s3cr$t"}, // expanded text is not expanded again
		{"'${PORT}'", "8883"},
		{"${UNSET}", "!test.yaml:3:13: mqtt.username: environment variable UNSET is not set (write ${UNSET:-default} to give a default)"},
		{"${HOST", `!test.yaml:3:13: mqtt.username: unterminated "${HOST"; write $$ for a literal $`},
		{"${1X}", `!test.yaml:3:13: mqtt.username: invalid variable name in "${1X}"`},
		{"${}", `!test.yaml:3:13: mqtt.username: invalid variable name in "${}"`},
	}
	for _, tt := range tests {
		doc := "mqtt:\n  url: tcp://${HOST}:${PORT}\n  username: " + tt.in + "\n" + minimal[len("\nmqtt:\n  url: tcp://127.0.0.1:1883\n"):]
		c, err := Parse("test.yaml", []byte(doc), env)
		if msg, isErr := strings.CutPrefix(tt.want, "!"); isErr {
			if err == nil || err.Error() != msg {
				t.Errorf("%s: error = %v, want %s", tt.in, err, msg)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.in, err)
			continue
		}
		if c.MQTT[0].Username != tt.want || c.MQTT[0].URL != "tcp://broker:8883" {
			t.Errorf("%s: username %q, url %q; want %q", tt.in, c.MQTT[0].Username, c.MQTT[0].URL, tt.want)
		}
	}

	// Unquoted numbers and durations are typed after expansion; quoted
	// ones stay strings.
	c := mustParse(t, strings.Replace(minimal, "mqtt:\n", "mqtt:\n  receive_maximum: ${RM}\n  keep_alive: ${KA}\n", 1), env)
	if c.MQTT[0].ReceiveMaximum != 250 || c.MQTT[0].KeepAlive != time.Minute {
		t.Errorf("ReceiveMaximum = %d, KeepAlive = %v", c.MQTT[0].ReceiveMaximum, c.MQTT[0].KeepAlive)
	}
	_, err := Parse("test.yaml", []byte(strings.Replace(minimal, "mqtt:\n", "mqtt:\n  receive_maximum: \"${RM}\"\n", 1)), env)
	if err == nil || err.Error() != `test.yaml:3:20: mqtt.receive_maximum: must be an integer, got string "250"` {
		t.Errorf("quoted number: %v", err)
	}
	// A variable that expands to nothing leaves the key unset.
	c = mustParse(t, strings.Replace(minimal, "mqtt:\n", "mqtt:\n  receive_maximum: ${EMPTY}\n", 1), env)
	if c.MQTT[0].ReceiveMaximum != 1000 {
		t.Errorf("ReceiveMaximum = %d from an empty variable", c.MQTT[0].ReceiveMaximum)
	}
}

func TestMasked(t *testing.T) {
	c := mustParse(t, strings.Replace(minimal, "mqtt:\n", "mqtt:\n  username: ferry\n  password: hunter2\n", 1), testEnv())
	if c.MQTT[0].Password != "hunter2" {
		t.Fatalf("Password = %q", string(c.MQTT[0].Password))
	}
	out, err := c.Masked()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "hunter2") || !strings.Contains(string(out), `password: '***'`) {
		t.Errorf("Masked:\n%s", out)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		if s := fmt.Sprintf(verb, c); strings.Contains(s, "hunter2") {
			t.Errorf("%s prints the password: %s", verb, s)
		}
	}
	// What Masked prints is a configuration that loads back the same.
	back, err := Parse("masked.yaml", out, testEnv())
	if err != nil {
		t.Fatalf("parse Masked output: %v\n%s", err, out)
	}
	back.MQTT[0].Password = c.MQTT[0].Password
	if !reflect.DeepEqual(back, c) {
		t.Errorf("round trip:\ngot  %+v\nwant %+v", back, c)
	}
	if Secret("").String() != "" {
		t.Error("empty Secret prints as non-empty")
	}
}

func TestWarnings(t *testing.T) {
	doc := `
mqtt:
  url: tcp://127.0.0.1:1883
  subscriptions:
    - filter: sensors/+/telemetry
    - filter: alarms/#
    - filter: "#"
forward:
  kafka:
    brokers: [127.0.0.1:9092]
  routes:
    - match: sensors/{device}/telemetry
      topic: telemetry
    - match: $SYS/#
      topic: sys
`
	c := mustParse(t, doc, testEnv())
	// "#" reaches the telemetry route; $SYS topics are not matched by it.
	want := []string{
		`test.yaml:6:15: mqtt.subscriptions[1].filter: no route matches any topic of "alarms/#"`,
		`test.yaml:7:15: mqtt.subscriptions[2].filter: overlaps mqtt.subscriptions[0].filter "sensors/+/telemetry": a message matching both comes once through each (Mosquitto sends a copy per subscription), and is forwarded twice`,
		`test.yaml:14:14: forward.routes[1].match: no subscription receives any topic of "$SYS/#"; the route is never used`,
	}
	if !reflect.DeepEqual(c.Warnings, want) {
		t.Errorf("Warnings:\n%s\nwant:\n%s", strings.Join(c.Warnings, "\n"), strings.Join(want, "\n"))
	}
}

// Routes that an earlier route shadows completely are warned about; a
// default route, {#}, {gateway_id}, headers, formats and drop routes
// pass.
func TestRouteWarnings(t *testing.T) {
	doc := `
mqtt:
  url: tcp://127.0.0.1:1883
  subscriptions:
    - filter: "#"
forward:
  kafka:
    brokers: [127.0.0.1:9092]
  routes:
    - match: sensors/debug/#
      drop: true
    - match: sensors/+/telemetry
      topic: telemetry
      key: "{gateway_id}"
      headers:
        site: hall-3
        source: "{gateway_id}"
      format: envelope
    - match: sensors/dev1/telemetry
      topic: dev1
    - match: sensors/debug/x
      topic: x
    - match: sensors/{device}/#
      topic: sensors.{device}
      key: "{#}"
    - match: "#"
      topic: all.{#}
    - default: true
      topic: unmatched
`
	c := mustParse(t, doc, testEnv())
	want := []string{
		`test.yaml:19:14: forward.routes[2].match: never used: forward.routes[1] (match "sensors/+/telemetry") comes first and matches every topic this route does`,
		`test.yaml:21:14: forward.routes[3].match: never used: forward.routes[0] (match "sensors/debug/#") comes first and matches every topic this route does`,
		`test.yaml:27:14: forward.routes[5].topic: {#} holds a '/' whenever it matched more than one level, which a Kafka topic name cannot: those records are dead-lettered (invalid_topic)`,
	}
	if !reflect.DeepEqual(c.Warnings, want) {
		t.Errorf("Warnings:\n%s\nwant:\n%s", strings.Join(c.Warnings, "\n"), strings.Join(want, "\n"))
	}
	r := c.Forward.Routes[1]
	if r.Format != FormatEnvelope || len(r.Headers) != 2 || r.Headers[0] != (RouteHeader{"site", "hall-3"}) || r.Headers[1] != (RouteHeader{"source", "{gateway_id}"}) {
		t.Errorf("route 1: %+v", r)
	}
	if !c.Forward.Routes[0].Drop || c.Forward.Routes[0].Format != "" || !c.Forward.Routes[6].Default {
		t.Errorf("routes: %+v", c.Forward.Routes)
	}
}

func TestErrorsAs(t *testing.T) {
	_, err := Parse("x.yaml", []byte("mqtt: {qos: 1}\n"), testEnv())
	var e *Error
	if !errors.As(err, &e) || e.Path != "mqtt.qos" || e.Line != 1 || e.Column != 8 {
		t.Errorf("errors.As: %#v from %v", e, err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v", err)
	}
}

// TestBad checks the exact errors a user sees for each configuration in
// testdata/config/bad (as ferry check loads it, in that directory, so that
// the files it names are found in testdata/config/bad/files) against its
// golden .err file. Run with -update to rewrite them.
func TestBad(t *testing.T) {
	t.Chdir("../testdata/config/bad")
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad configs: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(file, ".yaml"), func(t *testing.T) {
			_, err := load(file, testEnv("FERRY_SET", "yes"), true)
			if err == nil {
				t.Fatal("LoadAndCheck succeeded")
			}
			got := err.Error() + "\n"
			// The bad configurations' passwords hold "Secret".
			if strings.Contains(got, "Secret") {
				t.Errorf("an error shows a password:\n%s", got)
			}
			golden := strings.TrimSuffix(file, ".yaml") + ".err"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("errors differ from %s\ngot:\n%swant:\n%s", golden, got, want)
			}
		})
	}
}

// FuzzParse checks that Parse never panics, that each error has a message,
// and that what Masked prints parses back to the same configuration.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("../testdata/config/*/*.yaml")
	seeds = append(seeds, "../testdata/config/example.yaml")
	for _, file := range seeds {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("a: &x {b: 1}\nmqtt: *x\n"))
	f.Add([]byte("mqtt:\n  url: ${U:-tcp://h:1}\n  keep_alive: ${K:-5s}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data, testEnv("K", "1m"))
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %T %v is not a non-empty Errors", err, err)
			}
			for _, e := range errs {
				if e.Msg == "" || e.File != "fuzz.yaml" {
					t.Fatalf("bad error %#v", e)
				}
			}
			return
		}
		out, err := c.Masked()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "$") || slices.ContainsFunc(c.MQTT, func(m MQTT) bool { return m.Password != "" }) {
			return
		}
		back, err := Parse("masked.yaml", out, testEnv())
		if err != nil {
			t.Fatalf("Masked output does not parse: %v\n%s", err, out)
		}
		back.Warnings, c.Warnings = nil, nil
		if !reflect.DeepEqual(back, c) {
			t.Fatalf("round trip:\ngot  %#v\nwant %#v", back, c)
		}
	})
}

func TestBufferLimits(t *testing.T) {
	base := "gateway_id: g\nmqtt:\n  url: tcp://127.0.0.1:1883\n  subscriptions: [{filter: a/#}]\nforward:\n  kafka: {brokers: [127.0.0.1:9092]}\n  routes: [{match: a/#, topic: t}]\n"
	for _, tc := range []struct {
		yaml    string
		intSize int
		want    Buffer
		err     string
	}{
		{yaml: "buffer: {max_bytes: 512MiB, max_age: 3d, when_full: block, sync: interval, sync_interval: 1s}",
			want: Buffer{MaxBytes: 512 << 20, MaxAge: 72 * time.Hour, WhenFull: "block", Sync: "interval", SyncInterval: time.Second}},
		{yaml: "buffer: {max_bytes: 2GB, max_age: 0}", want: Buffer{MaxBytes: 2e9, MaxAge: 0, WhenFull: "drop_oldest", Sync: "delayed"}},
		{yaml: "buffer: {sync: always, max_bytes: 1GB}", want: Buffer{MaxBytes: 1e9, Sync: "always"}},
		{yaml: "buffer: {write_delay: 250ms, max_bytes: 1GB}", want: Buffer{MaxBytes: 1e9, Sync: "delayed", WriteDelay: 250 * time.Millisecond}},
		{yaml: "buffer: {max_bytes: 1073741824}", want: Buffer{MaxBytes: 1 << 30, MaxAge: 7 * 24 * time.Hour}},
		{yaml: "", intSize: 32, want: Buffer{MaxBytes: 768 << 20, MaxDeadLetterBytes: 64 << 20}},
		{yaml: "buffer: {max_bytes: 512MiB, max_dead_letter_bytes: 320MiB}", intSize: 32, want: Buffer{MaxBytes: 512 << 20, MaxDeadLetterBytes: 320 << 20}},
		{yaml: "buffer: {max_dead_letter_bytes: 65MiB}", intSize: 32,
			err: "buffer.max_dead_letter_bytes: must be at most 64MiB on a 32-bit system with max_bytes 768MiB, got 65MiB"},
		{yaml: "buffer: {max_bytes: 512MiB, max_dead_letter_bytes: 0}", intSize: 32,
			err: "buffer.max_dead_letter_bytes: must be at most 320MiB on a 32-bit system with max_bytes 512MiB, got 0B"},
		{yaml: "buffer: {max_dead_letter_bytes: 1GB}", want: Buffer{MaxBytes: 1 << 30, MaxDeadLetterBytes: 1e9}},
		{yaml: "buffer: {max_dead_letter_bytes: 0}", want: Buffer{MaxBytes: 1 << 30, MaxDeadLetterBytes: 0}},
		{yaml: "buffer: {max_dead_letter_bytes: lots}", err: `buffer.max_dead_letter_bytes: must be a size such as 512MiB or 1GiB, got "lots"`},
		{yaml: "buffer: {max_bytes: 1GiB}", intSize: 32, err: "buffer.max_bytes: must be at most 768MiB on a 32-bit system, got 1GiB"},
		{yaml: "buffer: {max_bytes: 0}", intSize: 32, err: "buffer.max_bytes: must be at most 768MiB on a 32-bit system, got 0B"},
		{yaml: "buffer: {max_bytes: lots}", err: `buffer.max_bytes: must be a size such as 512MiB or 1GiB, got "lots"`},
		{yaml: "buffer: {when_full: wait}", err: `buffer.when_full: must be drop_oldest or block, got "wait"`},
		{yaml: "buffer: {on_corrupt: ignore}", err: `buffer.on_corrupt: must be move_aside or fail, got "ignore"`},
	} {
		if tc.intSize == 0 {
			tc.intSize = 64
		}
		cfg, err := Parse("f.yaml", []byte(base+tc.yaml), Env{IntSize: tc.intSize, Hostname: func() (string, error) { return "h", nil }})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.yaml, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.yaml, err)
			continue
		}
		b := cfg.Buffer
		checkDL := tc.want.MaxDeadLetterBytes != 0 || strings.Contains(tc.yaml, "max_dead_letter_bytes")
		if b.MaxBytes != tc.want.MaxBytes || checkDL && b.MaxDeadLetterBytes != tc.want.MaxDeadLetterBytes || tc.want.MaxAge != 0 && b.MaxAge != tc.want.MaxAge ||
			tc.want.WhenFull != "" && b.WhenFull != tc.want.WhenFull || tc.want.Sync != "" && b.Sync != tc.want.Sync ||
			tc.want.SyncInterval != 0 && b.SyncInterval != tc.want.SyncInterval || tc.want.WriteDelay != 0 && b.WriteDelay != tc.want.WriteDelay {
			t.Errorf("%q: buffer %+v, want %+v", tc.yaml, b, tc.want)
		}
		if want := int64(tc.want.MaxDeadLetterBytes); checkDL && (want == 0 && b.DeadLetterLimit() != -1 || want != 0 && b.DeadLetterLimit() != want) {
			t.Errorf("%q: dead-letter limit %d for %v", tc.yaml, b.DeadLetterLimit(), b.MaxDeadLetterBytes)
		}
		if strings.Contains(tc.yaml, "max_age: 0") && b.MaxAge != 0 {
			t.Errorf("%q: max_age %v, want 0 (off)", tc.yaml, b.MaxAge)
		}
	}
}

// TestRanges: a duration or size past the longest ferry can hold is refused
// with the range, never wrapped around (213504d became 25m26s, 365000d a
// negative duration); the limits ferry's own arithmetic needs are checked
// too.
func TestRanges(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{in: "106751d", want: 106751 * 24 * time.Hour},
		{in: "2562047h", want: 2562047 * time.Hour},
		{in: "9223372036854775807ns", want: math.MaxInt64},
		{in: "-9223372036854775808ns", want: math.MinInt64},
		{in: "0d", want: 0},
		{in: "106752d", err: `out of range: a duration can be at most 106751d (2562047h47m16s), got "106752d"`},
		{in: "213504d", err: `out of range: a duration can be at most 106751d (2562047h47m16s), got "213504d"`},
		{in: "365000d", err: `out of range: a duration can be at most 106751d (2562047h47m16s), got "365000d"`},
		{in: "99999999999999999999d", err: `out of range: a duration can be at most 106751d (2562047h47m16s), got "99999999999999999999d"`},
		{in: "2562048h", err: `out of range: a duration can be at most 106751d (2562047h47m16s), got "2562048h"`},
		{in: "9223372036854775808ns", err: `out of range: a duration can be at most 106751d (2562047h47m16s), got "9223372036854775808ns"`},
		{in: "1h9223372036854775807ns", err: `out of range: a duration can be at most 106751d (2562047h47m16s), got "1h9223372036854775807ns"`},
		{in: "-2562048h", err: `out of range: a duration can be at least -106751d (-2562047h47m16s), got "-2562048h"`},
		{in: "-1d", err: `must be a duration such as 10s, 24h or 7d, got "-1d"`},
		{in: "1 day", err: `must be a duration such as 10s, 24h or 7d, got "1 day"`},
		{in: "1x", err: `must be a duration such as 10s, 24h or 7d, got "1x"`},
	} {
		d, err := parseDuration(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("parseDuration(%q) = %v, %v; want error %s", tc.in, d, err, tc.err)
			}
		} else if err != nil || d != tc.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", tc.in, d, err, tc.want)
		}
	}
	// Integers: the platform's int.
	for _, v := range []string{"99999999999999999999", "18446744073709551615", "-9223372036854775809", fmt.Sprint(uint64(math.MaxInt) + 1)} {
		_, err := Parse("test.yaml", []byte(strings.Replace(minimal, "mqtt:\n", "mqtt:\n  receive_maximum: "+v+"\n", 1)), testEnv())
		want := fmt.Sprintf("test.yaml:3:20: mqtt.receive_maximum: out of range: an integer can be from %d to %d, got %q", math.MinInt, math.MaxInt, v)
		if err == nil || err.Error() != want {
			t.Errorf("receive_maximum %s: %v\nwant %s", v, err, want)
		}
	}
	for _, tc := range []struct {
		in   string
		want int64
		err  string
	}{
		{in: "9223372036854775807", want: math.MaxInt64},
		{in: "8388607TiB", want: 8388607 << 40},
		{in: "9223372GB", want: 9223372e9},
		{in: "8388608TiB", err: `out of range: a size can be at most 9223372036854775807 bytes (8388607TiB), got "8388608TiB"`},
		{in: "9223372036854775808", err: `out of range: a size can be at most 9223372036854775807 bytes (8388607TiB), got "9223372036854775808"`},
		{in: "99999999999999999999 KiB", err: `out of range: a size can be at most 9223372036854775807 bytes (8388607TiB), got "99999999999999999999 KiB"`},
		{in: "64 megs", err: `must be a size such as 512MiB or 1GiB, got "64 megs"`},
		{in: "-1", err: `must be a size such as 512MiB or 1GiB, got "-1"`},
	} {
		n, err := parseByteSize(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("parseByteSize(%q) = %v, %v; want error %s", tc.in, n, err, tc.err)
			}
		} else if err != nil || n != tc.want {
			t.Errorf("parseByteSize(%q) = %v, %v; want %v", tc.in, n, err, tc.want)
		}
	}
}

// TestPlainTextPassword: a password sent to the MQTT broker without TLS is
// a warning, unless the broker is on this host (loopback).
func TestPlainTextPassword(t *testing.T) {
	for _, tc := range []struct {
		url, creds string
		warn       string
	}{
		{url: "tcp://10.0.0.5:1883", creds: "password: pw", warn: `test.yaml:3:8: mqtt.url: tcp:// sends mqtt.password in clear text to 10.0.0.5, which is not this host: anyone on the network path can read it; use ssl://, mqtts:// or wss://`},
		{url: "mqtt://broker.example:1883", creds: "password_file: /dev/null", warn: `test.yaml:3:8: mqtt.url: mqtt:// sends mqtt.password_file's password in clear text to broker.example, which is not this host: anyone on the network path can read it; use ssl://, mqtts:// or wss://`},
		{url: "ws://[fd00::1]:80/mqtt", creds: "password: pw", warn: `test.yaml:3:8: mqtt.url: ws:// sends mqtt.password in clear text to fd00::1, which is not this host: anyone on the network path can read it; use ssl://, mqtts:// or wss://`},
		{url: "tcp://127.0.0.1:1883", creds: "password: pw"},
		{url: "tcp://127.0.0.53:1883", creds: "password: pw"},
		{url: "tcp://[::1]:1883", creds: "password: pw"},
		{url: "tcp://localhost:1883", creds: "password: pw"},
		{url: "ssl://10.0.0.5:8883", creds: "password: pw"},
		{url: "wss://10.0.0.5:443/mqtt", creds: "password: pw"},
		{url: "tcp://10.0.0.5:1883", creds: "client_id: c"},
	} {
		doc := strings.Replace(minimal, "  url: tcp://127.0.0.1:1883\n", "  url: "+tc.url+"\n  username: u\n  "+tc.creds+"\n", 1)
		c := mustParse(t, doc, testEnv())
		var want []string
		if tc.warn != "" {
			want = []string{tc.warn}
		}
		if !reflect.DeepEqual(c.Warnings, want) {
			t.Errorf("%s with %s: warnings %q, want %q", tc.url, tc.creds, c.Warnings, want)
		}
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"tcp://u:pw@h:1":                         "tcp://u:xxxxx@h:1",
		"mqtts//ferry:Hunter2Secret@broker:8883": "mqtts//ferry:xxxxx@broker:8883",
		"tcp://u:p/w@h:1":                        "tcp://u:xxxxx@h:1",
		"tcp://u:p@w@h:1/x":                      "tcp://u:xxxxx@h:1/x",
		"tcp://:pw@h:1":                          "tcp://:xxxxx@h:1",
		"ferry:Hunter2Secret@kafka:9092":         "ferry:xxxxx@kafka:9092",
		"tcp:ferry:pw@h:1":                       "tcp:xxxxx@h:1",
		"tcp://u@h:1":                            "tcp://u@h:1",
		"tcp://h:1":                              "tcp://h:1",
		"tcp://ferry:Hunter2Secret@broker:18 83": "tcp://ferry:xxxxx@broker:18 83",
		"ws://h:80/mqtt":                         "ws://h:80/mqtt",
		"":                                       "",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// Per-subscription options decode to their values; a shared subscription's
// filter part is what routes are checked against; mqtt.tls is read for a
// TLS URL and warns when it verifies nothing.
func TestSubscriptionOptionsAndMQTTTLS(t *testing.T) {
	doc := `
mqtt:
  url: mqtts://broker.example:8883
  max_payload_bytes: 64KiB
  tls:
    server_name: broker.internal
    insecure_skip_verify: true
  subscriptions:
    - filter: $share/ferry/sensors/+/telemetry
      qos: 2
      retain_handling: 2
    - filter: cmd/#
      qos: 0
      no_local: true
      retain_as_published: true
      retain_handling: 0
forward:
  kafka:
    brokers: [127.0.0.1:9092]
  routes:
    - match: sensors/{device}/telemetry
      topic: telemetry
    - match: cmd/#
      topic: commands
`
	c := mustParse(t, doc, testEnv())
	want := []Subscription{
		{Filter: "$share/ferry/sensors/+/telemetry", QoS: 2, RetainHandling: 2},
		{Filter: "cmd/#", QoS: 0, NoLocal: true, RetainAsPublished: true, RetainHandling: 0},
	}
	if !reflect.DeepEqual(c.MQTT[0].Subscriptions, want) {
		t.Errorf("subscriptions %+v, want %+v", c.MQTT[0].Subscriptions, want)
	}
	if c.MQTT[0].MaxPayloadBytes != 64<<10 || c.MQTT[0].TLS.ServerName != "broker.internal" || !c.MQTT[0].TLS.InsecureSkipVerify {
		t.Errorf("mqtt %+v", c.MQTT)
	}
	wantWarn := []string{`test.yaml:7:27: mqtt.tls.insecure_skip_verify: the MQTT broker's certificate is NOT verified: anyone on the path can read and change the data and learn the password; use only for tests`}
	if !reflect.DeepEqual(c.Warnings, wantWarn) {
		t.Errorf("Warnings:\n%s\nwant:\n%s", strings.Join(c.Warnings, "\n"), strings.Join(wantWarn, "\n"))
	}
}
