package topic

import (
	"slices"
	"strings"
	"testing"
)

func TestParsePattern(t *testing.T) {
	tests := []struct {
		in      string
		filter  string
		names   []string
		wantErr string // substring; empty means valid
	}{
		{in: "a", filter: "a"},
		{in: "#", filter: "#", names: []string{"#"}},
		{in: "+", filter: "+"},
		{in: "/", filter: "/"},
		{in: "a//b", filter: "a//b"},
		{in: "sensors/{device}/telemetry", filter: "sensors/+/telemetry", names: []string{"device"}},
		{in: "{site}/+/{dev_1}/#", filter: "+/+/+/#", names: []string{"site", "dev_1", "#"}},
		{in: "$SYS/{x}", filter: "$SYS/+", names: []string{"x"}},
		{in: "", wantErr: "empty"},
		{in: "a/#/b", wantErr: `level 2 "#": '#' must be the last level`},
		{in: "a#", wantErr: `level 1 "a#": '#' must be a whole level`},
		{in: "a/b+", wantErr: `level 2 "b+": '+' must be a whole level`},
		{in: "{}", wantErr: "capture name must be"},
		{in: "{a-b}", wantErr: "capture name must be"},
		{in: "x{a}", wantErr: "braces must enclose a whole level"},
		{in: "{a", wantErr: "braces must enclose a whole level"},
		{in: "a}", wantErr: "braces must enclose a whole level"},
		{in: "{a}/{a}", wantErr: `name "a" is captured twice`},
		{in: "a\x00b", wantErr: "NUL"},
		{in: "a\xffb", wantErr: "UTF-8"},
		{in: strings.Repeat("a", 65536), wantErr: "the limit is 65535"},
	}
	for _, tt := range tests {
		p, err := ParsePattern(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParsePattern(%.20q) error = %v, want it to contain %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParsePattern(%q): %v", tt.in, err)
			continue
		}
		if p.String() != tt.in || p.Filter() != tt.filter || !slices.Equal(p.Names(), tt.names) {
			t.Errorf("ParsePattern(%q) = %q, %q, %q; want filter %q, names %q", tt.in, p.String(), p.Filter(), p.Names(), tt.filter, tt.names)
		}
		if err := ValidFilter(p.Filter()); err != nil {
			t.Errorf("ValidFilter(%q): %v", p.Filter(), err)
		}
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, topic string
		want           []string // captured values; nil with ok false
		ok             bool
	}{
		{"a/b", "a/b", nil, true},
		{"a/b", "a/c", nil, false},
		{"a/b", "a", nil, false},
		{"a/b", "a/b/c", nil, false},
		{"a/b", "a/b/", nil, false},
		{"+", "a", nil, true},
		{"+", "", nil, false},
		{"+", "a/b", nil, false},
		{"+", "/", nil, false},
		{"+/+", "/", nil, true}, // two empty levels
		{"a/+", "a/", nil, true},
		{"#", "a/b/c", []string{"a/b/c"}, true}, // '#' captures the rest as {#}
		{"#", "/", []string{"/"}, true},
		{"a/#", "a", []string{""}, true}, // '#' matches the parent level
		{"a/#", "a/", []string{""}, true},
		{"a/#", "a/b/c", []string{"b/c"}, true},
		{"a/#", "ab", nil, false},
		{"a/#", "b/a", nil, false},
		{"{d}", "x", []string{"x"}, true},
		{"s/{d}/t", "s/dev1/t", []string{"dev1"}, true},
		{"s/{d}/t", "s//t", []string{""}, true},
		{"s/{d}/t", "s/dev1/u", nil, false},
		{"s/{d}/t", "s/dev1", nil, false},
		{"{a}/+/{b}/#", "x/y/z", []string{"x", "z", ""}, true},
		{"{a}/+/{b}/#", "x/y/z/w/v", []string{"x", "z", "w/v"}, true},
		{"{a}/+/{b}/#", "x/y", nil, false},
		// Topics starting with '$' are not matched by a leading wildcard.
		{"#", "$SYS/a", nil, false},
		{"+/a", "$SYS/a", nil, false},
		{"{x}/a", "$SYS/a", nil, false},
		{"$SYS/#", "$SYS/a", []string{"a"}, true},
		{"$SYS/{x}", "$SYS/a", []string{"a"}, true},
		{"a/#", "a/$b", []string{"$b"}, true},
		// Wildcards in a topic name are plain characters.
		{"a/+", "a/+", nil, true},
		{"a/b", "a/+", nil, false},
	}
	for _, tt := range tests {
		p, err := ParsePattern(tt.pattern)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := p.Match(tt.topic, []string{"junk"})
		if ok != tt.ok || len(got) != len(tt.want) || !slices.Equal(got, tt.want) && len(tt.want) > 0 {
			t.Errorf("%q.Match(%q) = %q, %v; want %q, %v", tt.pattern, tt.topic, got, ok, tt.want, tt.ok)
		}
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	p, err := ParsePattern("site/{site}/+/{device}/#")
	if err != nil {
		t.Fatal(err)
	}
	vals := make([]string, 0, len(p.Names()))
	allocs := testing.AllocsPerRun(100, func() {
		vals, _ = p.Match("site/s1/x/dev-42/telemetry/temp", vals)
	})
	if allocs != 0 {
		t.Errorf("Match allocates %v times per call, want 0", allocs)
	}
}

func TestValidFilter(t *testing.T) {
	valid := []string{"a", "#", "+", "+/+", "a/#", "/", "$SYS/#", "a/{b}", "a b/c"}
	for _, f := range valid {
		if err := ValidFilter(f); err != nil {
			t.Errorf("ValidFilter(%q): %v", f, err)
		}
	}
	invalid := map[string]string{
		"":      "empty",
		"a/#/b": "'#' must be the last level",
		"#/a":   "'#' must be the last level",
		"a#":    "'#' must be a whole level",
		"a/b+":  "'+' must be a whole level",
		"++":    "'+' must be a whole level",
		"a\x00": "NUL",
	}
	for f, want := range invalid {
		if err := ValidFilter(f); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidFilter(%q) = %v, want error containing %q", f, err, want)
		}
	}
}

func TestOverlap(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"a", "a/b", false},
		{"a", "a/", false},
		{"+", "a", true},
		{"+", "a/b", false},
		{"#", "a/b", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "b/#", false},
		{"+/#", "a", true},
		{"a/+/c", "+/b/+", true},
		{"a/+/c", "+/b/d", false},
		{"sensors/+/telemetry", "sensors/+/telemetry", true},
		{"sensors/+/telemetry", "sensors/dev1/status", false},
		{"sensors/#", "sensors/+/telemetry", true},
		{"#", "$SYS/a", false},
		{"+/a", "$SYS/a", false},
		{"$SYS/#", "$SYS/a", true},
		{"#", "+", true},
		{"a/+", "a/#", true},
	}
	for _, tt := range tests {
		if got := Overlap(tt.a, tt.b); got != tt.want {
			t.Errorf("Overlap(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if got := Overlap(tt.b, tt.a); got != tt.want {
			t.Errorf("Overlap(%q, %q) = %v, want %v", tt.b, tt.a, got, tt.want)
		}
	}
}

func TestTemplate(t *testing.T) {
	names := []string{"site", "device"}
	vals := []string{"s1", "dev-7"}
	tests := []struct {
		in, want string
		static   bool
		wantErr  string
	}{
		{in: "", want: "", static: true},
		{in: "telemetry", want: "telemetry", static: true},
		{in: "{device}", want: "dev-7"},
		{in: "telemetry.{device}", want: "telemetry.dev-7"},
		{in: "{site}.{device}.raw", want: "s1.dev-7.raw"},
		{in: "{device}{device}", want: "dev-7dev-7"},
		{in: "{nope}", wantErr: "placeholder {nope} is not captured by the pattern (captures: {site}, {device})"},
		{in: "a{", wantErr: "'{' without '}' at offset 1"},
		{in: "a{b{c}", wantErr: "'{' without '}' at offset 1"},
		{in: "a}", wantErr: "'}' without '{' at offset 1"},
		{in: "{}", wantErr: "name must be"},
		{in: "{a.b}", wantErr: "name must be"},
	}
	for _, tt := range tests {
		tmpl, err := ParseTemplate(tt.in, names)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseTemplate(%q) error = %v, want it to contain %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseTemplate(%q): %v", tt.in, err)
			continue
		}
		if got := tmpl.Expand(vals); got != tt.want {
			t.Errorf("%q.Expand = %q, want %q", tt.in, got, tt.want)
		}
		if tmpl.IsStatic() != tt.static || tmpl.String() != tt.in {
			t.Errorf("%q: IsStatic = %v, String = %q", tt.in, tmpl.IsStatic(), tmpl.String())
		}
	}
	if _, err := ParseTemplate("{x}", nil); err == nil || !strings.Contains(err.Error(), "(captures: none)") {
		t.Errorf("ParseTemplate with no names: %v", err)
	}
}

// FuzzMatch checks that ParsePattern accepts exactly what ValidFilter accepts
// once captures are replaced by "+", and that Match agrees with a plain
// level-by-level reference implementation of MQTT matching.
func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"a/b", "a/b"}, {"a/#", "a"}, {"#", "$SYS/x"}, {"s/{d}/t", "s/x/t"},
		{"+/+", "/"}, {"{a}/{a}", "x/y"}, {"a/#/b", "a/x/b"}, {"x{a}", "xa"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, topic string) {
		p, err := ParsePattern(pattern)
		if err != nil {
			return
		}
		if err := ValidFilter(p.Filter()); err != nil {
			t.Fatalf("ParsePattern(%q) ok but ValidFilter(%q): %v", pattern, p.Filter(), err)
		}
		vals, ok := p.Match(topic, nil)
		want, wantOK := refMatch(strings.Split(pattern, "/"), topic)
		if ok != wantOK || ok && !slices.Equal(vals, want) {
			t.Fatalf("%q.Match(%q) = %q, %v; reference says %q, %v", pattern, topic, vals, ok, want, wantOK)
		}
		if !ok && len(vals) != 0 {
			t.Fatalf("%q.Match(%q) returned values %q without a match", pattern, topic, vals)
		}
		if ok && !Overlap(p.Filter(), p.Filter()) {
			t.Fatalf("Overlap(%q, itself) = false", p.Filter())
		}
	})
}

func refMatch(pattern []string, topic string) ([]string, bool) {
	if topic == "" {
		return nil, false
	}
	if topic[0] == '$' && (pattern[0] == "+" || pattern[0] == "#" || strings.HasPrefix(pattern[0], "{")) {
		return nil, false
	}
	levels := strings.Split(topic, "/")
	var vals []string
	for i, pl := range pattern {
		if pl == "#" {
			return append(vals, strings.Join(levels[min(i, len(levels)):], "/")), true
		}
		if i >= len(levels) {
			return nil, false
		}
		switch {
		case strings.HasPrefix(pl, "{"):
			vals = append(vals, levels[i])
		case pl != "+" && pl != levels[i]:
			return nil, false
		}
	}
	if len(levels) != len(pattern) {
		return nil, false
	}
	return vals, true
}

func BenchmarkMatch(b *testing.B) {
	p, err := ParsePattern("site/{site}/+/{device}/#")
	if err != nil {
		b.Fatal(err)
	}
	topic := "site/s1/x/dev-42/telemetry/temp"
	vals := make([]string, 0, len(p.Names()))
	b.ReportAllocs()
	for b.Loop() {
		var ok bool
		if vals, ok = p.Match(topic, vals); !ok {
			b.Fatal("no match")
		}
	}
	b.ReportMetric(float64(len(topic)*b.N)/b.Elapsed().Seconds()/1e6, "MB/s")
}

func TestMatchFilter(t *testing.T) {
	tests := []struct {
		f, topic string
		want     bool
	}{
		{"#", "a/b", true},
		{"#", "$SYS/x", false},
		{"+/b", "$SYS/b", false},
		{"$SYS/#", "$SYS/x", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/+", "a/b", true},
		{"a/+", "a/", true},
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"sensors/+/telemetry", "sensors/x/telemetry", true},
		{"sensors/+/telemetry", "legacy/secret/x", false},
		{"+", "", false},
	}
	for _, tt := range tests {
		if got := MatchFilter(tt.f, tt.topic); got != tt.want {
			t.Errorf("MatchFilter(%q, %q) = %v, want %v", tt.f, tt.topic, got, tt.want)
		}
		// It agrees with a pattern of the same filter.
		if p, err := ParsePattern(tt.f); err == nil && tt.topic != "" {
			if _, m := p.Match(tt.topic, nil); m != tt.want {
				t.Errorf("Pattern(%q).Match(%q) = %v, MatchFilter says %v", tt.f, tt.topic, m, tt.want)
			}
		}
	}
}

func TestSharedSubscriptions(t *testing.T) {
	tests := []struct {
		in            string
		group, filter string
		shared        bool
		wantErr       string
	}{
		{in: "sensors/#", filter: "sensors/#"},
		{in: "$share/ferry/sensors/+/telemetry", group: "ferry", filter: "sensors/+/telemetry", shared: true},
		{in: "$share/g/#", group: "g", filter: "#", shared: true},
		{in: "$share//a", filter: "a", shared: true, wantErr: "group name must not be empty"},
		{in: "$share/g+/a", group: "g+", filter: "a", shared: true, wantErr: "group name"},
		{in: "$share/g", group: "g", shared: true, wantErr: "no filter after the group name"},
		{in: "$share/g/a/#/b", group: "g", filter: "a/#/b", shared: true, wantErr: "'#' must be the last level"},
		{in: "$shared/g/a", filter: "$shared/g/a"},
	}
	for _, tt := range tests {
		g, f, s := SplitShared(tt.in)
		if g != tt.group || f != tt.filter || s != tt.shared {
			t.Errorf("SplitShared(%q) = %q, %q, %v; want %q, %q, %v", tt.in, g, f, s, tt.group, tt.filter, tt.shared)
		}
		err := ValidSubscription(tt.in)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("ValidSubscription(%q) = %v, want %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestCovers(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"#", "a/b", true},
		{"#", "#", true},
		{"#", "$SYS/a", false},
		{"$SYS/#", "$SYS/a", true},
		{"+/a", "$SYS/a", false},
		{"+", "a", true},
		{"+", "+", true},
		{"a", "+", false},
		{"+", "#", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "a/#", true},
		{"a/+", "a/#", false}, // "a/#" matches "a" and "a/b/c"
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"sensors/+/telemetry", "sensors/dev1/telemetry", true},
		{"sensors/dev1/telemetry", "sensors/+/telemetry", false},
		{"sensors/#", "sensors/+/telemetry", true},
		{"+/+/telemetry", "sensors/+/telemetry", true},
	}
	for _, tt := range tests {
		if got := Covers(tt.a, tt.b); got != tt.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if Covers(tt.a, tt.b) && !Overlap(tt.a, tt.b) {
			t.Errorf("Covers(%q, %q) without Overlap", tt.a, tt.b)
		}
	}
}

// FuzzCovers checks Covers against MatchFilter: a topic that b matches is
// matched by every a that covers b.
func FuzzCovers(f *testing.F) {
	for _, s := range [][3]string{
		{"a/#", "a", "a"}, {"a/+", "a/#", "a"}, {"#", "$SYS/a", "$SYS/a"}, {"+/+", "a/b", "a/b"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, a, b, topic string) {
		if ValidFilter(a) != nil || ValidFilter(b) != nil || topic == "" || strings.ContainsAny(topic, "+#") {
			return
		}
		if Covers(a, b) && MatchFilter(b, topic) && !MatchFilter(a, topic) {
			t.Fatalf("Covers(%q, %q) but %q matches only %q", a, b, topic, b)
		}
	})
}
