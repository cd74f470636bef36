package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFileSizeLimit: a configuration file over 1MiB is refused before it is
// parsed (a 50 MB file took 18 s and 835 MB), with its name, its size and
// the limit.
func TestFileSizeLimit(t *testing.T) {
	dir := t.TempDir()
	huge := filepath.Join(dir, "huge.yaml")
	f, err := os.Create(huge)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(50 << 20); err != nil { // sparse: nothing to read
		t.Fatal(err)
	}
	f.Close()
	over := writeFile(t, dir, "over.yaml", "#"+strings.Repeat("x", MaxFileSize)+"\n")
	for path, size := range map[string]int{huge: 50 << 20, over: MaxFileSize + 2} {
		for name, load := range map[string]func(string) (*Config, error){"Load": Load, "LoadAndCheck": LoadAndCheck} {
			_, err := load(path)
			want := fmt.Sprintf("%s: the file is %d bytes; a configuration file may be at most 1MiB (1048576 bytes)", path, size)
			if err == nil || err.Error() != want {
				t.Errorf("%s(%s): %v\nwant %s", name, filepath.Base(path), err, want)
			}
			var e *Error
			if !errors.As(err, &e) || e.File != path {
				t.Errorf("%s(%s): %#v is not an *Error naming the file", name, filepath.Base(path), err)
			}
		}
	}
	// At the limit the file is parsed.
	atLimit := writeFile(t, dir, "limit.yaml", minimal+"#"+strings.Repeat("x", MaxFileSize-len(minimal)-2)+"\n")
	if _, err := Load(atLimit); err != nil {
		t.Errorf("a file of exactly 1MiB: %v", err)
	}
}

// TestCountLimits: at most 1000 subscriptions and 1000 routes. Checking that
// each subscription meets a route costs subscriptions x routes: 20,000 of
// each in a 1MiB file took 19 s.
func TestCountLimits(t *testing.T) {
	var b strings.Builder
	b.WriteString("gateway_id: g\nmqtt:\n  url: tcp://127.0.0.1:1883\n  subscriptions:\n")
	for i := range 20000 {
		fmt.Fprintf(&b, "    - filter: s/%d/+/t\n", i)
	}
	b.WriteString("forward:\n  kafka: {brokers: [127.0.0.1:9092]}\n  routes:\n")
	for i := range 15000 {
		fmt.Fprintf(&b, "    - {match: r/%d/#, topic: t}\n", i)
	}
	_, err := Parse("big.yaml", []byte(b.String()), testEnv())
	want := "big.yaml:5:5: mqtt.subscriptions: at most 1000 subscriptions, got 20000: use wildcards (sensors/+/telemetry, sensors/#)\n" +
		"big.yaml:20008:5: forward.routes: at most 1000 routes, got 15000: use wildcards and {name} captures (sensors/{device}/telemetry)"
	if err == nil || err.Error() != want {
		t.Errorf("Parse: %.2000v\nwant:\n%s", err, want)
	}

	// 1000 of each is fine.
	var subs, routes strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&subs, "    - filter: s/%d/#\n", i)
		fmt.Fprintf(&routes, "    - {match: s/%d/#, topic: t}\n", i)
	}
	doc := strings.Replace(minimal, "    - filter: sensors/#\n", subs.String(), 1)
	doc = strings.Replace(doc, "    - match: sensors/#\n      topic: telemetry\n", routes.String(), 1)
	if c := mustParse(t, doc, testEnv()); len(c.MQTT[0].Subscriptions) != 1000 || len(c.Forward.Routes) != 1000 || len(c.Warnings) != 0 {
		t.Errorf("%d subscriptions, %d routes, warnings %q", len(c.MQTT[0].Subscriptions), len(c.Forward.Routes), c.Warnings)
	}
}

// TestErrorsBounded: a file with a problem on every line reports the first
// 100, then how many more there are.
func TestErrorsBounded(t *testing.T) {
	doc := "mqtt:\n  subscriptions:\n" + strings.Repeat("    - 1\n", 5000)
	_, err := Parse("bad.yaml", []byte(doc), testEnv())
	checkBounded(t, err, "bad.yaml", `bad.yaml:102:7: mqtt.subscriptions[99]: must be a mapping, got integer "1"`, "and 4900 more problems")
	// Validation errors too, and those of LoadAndCheck.
	doc = "mqtt:\n  subscriptions:\n" + strings.Repeat("    - {qos: 3}\n", 500)
	path := writeFile(t, t.TempDir(), "bad.yaml", doc)
	_, err = LoadAndCheck(path)
	checkBounded(t, err, path, path+":52:7: mqtt.subscriptions[49].filter: required", "and 903 more problems")
}

func checkBounded(t *testing.T, err error, file, hundredth, more string) {
	t.Helper()
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 101 {
		t.Fatalf("%d errors: %.500v", len(errs), err)
	}
	if got := errs[99].Error(); got != hundredth {
		t.Errorf("the 100th error: %s\nwant %s", got, hundredth)
	}
	if got, want := errs[100].Error(), file+": "+more; got != want {
		t.Errorf("the last error: %s\nwant %s", got, want)
	}
}

// TestAliases: YAML aliases cannot multiply the work. ferry decodes the node
// tree itself (yaml.v3's alias budget applies only to its own decoding),
// and the schema has no place where an alias can stand for a larger tree
// many times: sequences hold small mappings or scalars, and a key appears
// once. A "billion laughs" of 10^9 subscriptions is 10 errors.
func TestAliases(t *testing.T) {
	var b strings.Builder
	b.WriteString("l0: &l0 [{filter: a/#}, {filter: a/#}, {filter: a/#}, {filter: a/#}, {filter: a/#}, {filter: a/#}, {filter: a/#}, {filter: a/#}, {filter: a/#}, {filter: a/#}]\n")
	for i := 1; i <= 9; i++ {
		fmt.Fprintf(&b, "l%d: &l%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*l%d, ", i-1), 10), ", "))
	}
	b.WriteString("mqtt:\n  url: tcp://127.0.0.1:1883\n  subscriptions: *l9\nforward:\n  kafka: {brokers: [127.0.0.1:9092]}\n  routes: *l9\n")
	_, err := Parse("lol.yaml", []byte(b.String()), testEnv())
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 30 {
		t.Fatalf("%d errors: %.3000v", len(errs), err)
	}
	for _, want := range []string{
		"lol.yaml:1:1: l0: unknown key (valid keys: gateway_id, log, mqtt, buffer, forward, admin)",
		"lol.yaml:9:5: mqtt.subscriptions[9]: must be a mapping, got a sequence",
		"lol.yaml:9:5: forward.routes[9]: must be a mapping, got a sequence",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors lack %q:\n%v", want, err)
		}
	}
}

// TestMaxBytesPerSecond: the byte-rate cap is a size a second, off by
// default; a number without a unit below 1KiB is taken for a unit left
// out, and errors name the key with its position.
func TestMaxBytesPerSecond(t *testing.T) {
	for _, tc := range []struct {
		value string // "" for none
		want  ByteSize
		err   string
	}{
		{value: "", want: 0},
		{value: "0", want: 0},
		{value: "50KB", want: 50_000},
		{value: "256KiB", want: 256 << 10},
		{value: "1024", want: 1024},
		{value: "1GiB", want: 1 << 30},
		{value: "1023", err: "f.yaml:9:25: forward.max_bytes_per_second: must be 0 (no cap) or from 1KiB to 1GiB (bytes a second: 50KB, 256KiB), got 1023B"},
		{value: "2GiB", err: "f.yaml:9:25: forward.max_bytes_per_second: must be 0 (no cap) or from 1KiB to 1GiB (bytes a second: 50KB, 256KiB), got 2GiB"},
		{value: "-1KiB", err: `f.yaml:9:25: forward.max_bytes_per_second: must be a size such as 512MiB or 1GiB, got "-1KiB"`},
	} {
		doc := minimal
		if tc.value != "" {
			doc = strings.Replace(minimal, "  routes:", "  max_bytes_per_second: "+tc.value+"\n  routes:", 1)
		}
		c, err := Parse("f.yaml", []byte(doc), testEnv())
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: error %v\nwant %s", tc.value, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.value, err)
		} else if c.Forward.MaxBytesPerSecond != tc.want {
			t.Errorf("%q: %v, want %v", tc.value, c.Forward.MaxBytesPerSecond, tc.want)
		}
	}
}
