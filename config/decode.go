package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Error is one problem in a configuration file.
type Error struct {
	File   string
	Line   int    // 1-based; 0 when the problem has no position
	Column int    // 1-based; 0 when unknown
	Path   string // key path such as "mqtt.subscriptions[0].qos"; empty for the whole file
	Msg    string
}

// Error formats e as "file:line:column: path: message", leaving out the
// parts that are unknown.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Column > 0 {
			fmt.Fprintf(&b, ":%d", e.Column)
		}
	}
	if e.Path != "" {
		b.WriteString(": ")
		b.WriteString(e.Path)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in a configuration file, in file order.
type Errors []*Error

// Error prints one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find each *Error.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// maxErrors is how many problems Errors holds: a file with a problem on
// each of thousands of lines is reported by its first ones.
const maxErrors = 100

// sort orders es by position, problems without one last.
func (es Errors) sort() {
	slices.SortStableFunc(es, func(a, b *Error) int {
		if (a.Line == 0) != (b.Line == 0) {
			return b.Line - a.Line // the one with a position comes first
		}
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		return a.Column - b.Column
	})
}

// bounded returns the first maxErrors of es, followed by one that says how
// many more there are.
func (es Errors) bounded() Errors {
	if len(es) <= maxErrors {
		return es
	}
	more := &Error{File: es[0].File, Msg: fmt.Sprintf("and %d more problems", len(es)-maxErrors)}
	return append(es[:maxErrors:maxErrors], more)
}

type pos struct {
	line, col int // of the value
	keyLine   int // of the key; 0 for a sequence item
	keyCol    int
	set       bool // present and not null
}

// source remembers where each key path was found in the file.
type source struct {
	file string
	pos  map[string]pos
}

// isSet reports whether path was present in the file with a non-null value.
func (s *source) isSet(path string) bool { return s.pos[path].set }

// errorAt returns an error at path's value or, if path is not in the file,
// at the key of its nearest ancestor that is (but not at the top level,
// which the file name stands for).
func (s *source) errorAt(path, format string, args ...any) *Error {
	e := &Error{File: s.file, Path: path, Msg: fmt.Sprintf(format, args...)}
	if p, ok := s.pos[path]; ok {
		e.Line, e.Column = p.line, p.col
		return e
	}
	for parent := path; ; {
		parent = parent[:max(strings.LastIndexByte(parent, '.'), strings.LastIndexByte(parent, '['), 0)]
		if parent == "" {
			return e // the top level: the file name says enough
		}
		if p, ok := s.pos[parent]; ok {
			e.Line, e.Column = p.line, p.col
			if p.keyLine > 0 {
				e.Line, e.Column = p.keyLine, p.keyCol
			}
			return e
		}
	}
}

var yamlLineErr = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseYAML parses data into a node tree and returns its top-level mapping.
func parseYAML(file string, data []byte) (*yaml.Node, Errors) {
	fail := func(line, col int, format string, args ...any) Errors {
		return Errors{{File: file, Line: line, Column: col, Msg: fmt.Sprintf(format, args...)}}
	}
	syntax := func(err error) Errors {
		if m := yamlLineErr.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return fail(line, 0, "%s", m[2])
		}
		return fail(0, 0, "%s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, syntax(err)
	}
	if len(doc.Content) == 0 || doc.Content[0].ShortTag() == "!!null" {
		return nil, fail(0, 0, "the file is empty; it must at least configure mqtt and forward")
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		return nil, fail(next.Line, next.Column, "a second YAML document; the file must hold one")
	} else if !errors.Is(err, io.EOF) {
		return nil, syntax(err)
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fail(root.Line, root.Column, "the top level must be a mapping of keys such as mqtt: and forward:, got %s", describe(root))
	}
	return root, nil
}

// expand replaces ${VAR} references in the scalar values under n, the node
// at path. An unquoted scalar whose text changed is retyped by its new text.
func expand(src *source, n *yaml.Node, path string, env Env, errs *Errors) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			expand(src, n.Content[i+1], join(path, n.Content[i].Value), env, errs)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			expand(src, c, fmt.Sprintf("%s[%d]", path, i), env, errs)
		}
	case yaml.ScalarNode:
		if n.ShortTag() != "!!str" || !strings.Contains(n.Value, "$") {
			return
		}
		v, err := expandString(n.Value, env, secretPaths[path])
		if err != nil {
			*errs = append(*errs, &Error{File: src.file, Line: n.Line, Column: n.Column, Path: path, Msg: err.Error()})
			return
		}
		if v != n.Value && n.Style == 0 {
			n.Tag = "" // plain: let ShortTag resolve the new text
		}
		n.Value = v
	}
}

// secretPaths are the keys whose values are passwords: no message quotes
// them.
var secretPaths = map[string]bool{"mqtt.password": true, "forward.kafka.sasl.password": true}

// expandString expands the references in s. With secret, its errors do not
// quote s.
func expandString(s string, env Env, secret bool) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) || s[i+1] != '$' && s[i+1] != '{' {
			b.WriteByte(s[i])
			continue
		}
		if s[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			if secret {
				return "", errors.New("the password holds an unterminated ${ (not shown); write $$ for a literal $")
			}
			return "", fmt.Errorf("unterminated %q; write $$ for a literal $", s[i:])
		}
		ref := s[i : i+end+1]
		name, def, hasDef := strings.Cut(ref[2:len(ref)-1], ":-")
		if !validVar(name) {
			if secret {
				return "", errors.New("the password holds a ${...} with an invalid variable name (not shown); write $$ for a literal $")
			}
			return "", fmt.Errorf("invalid variable name in %q", ref)
		}
		v, ok := env.lookup(name)
		switch {
		case hasDef && v == "":
			v = def
		case !ok:
			return "", fmt.Errorf("environment variable %s is not set (write ${%s:-default} to give a default)", name, name)
		}
		b.WriteString(v)
		i += end
	}
	return b.String(), nil
}

func validVar(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || i > 0 && '0' <= c && c <= '9') {
			return false
		}
	}
	return s != ""
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

var (
	durationType     = reflect.TypeFor[time.Duration]()
	byteSizeType     = reflect.TypeFor[ByteSize]()
	connectionsType  = reflect.TypeFor[Connections]()
	routeHeadersType = reflect.TypeFor[RouteHeaders]()
)

// durationSyntax is what time.ParseDuration reads: when it refuses text of
// this form, the duration is out of range.
var durationSyntax = regexp.MustCompile(`^[-+]?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$`)

// maxDays is the most days a time.Duration holds.
const maxDays = math.MaxInt64 / int64(24*time.Hour)

// parseDuration is time.ParseDuration plus a whole number of days, "7d",
// which operators write for retention. Its errors are messages for the
// user: the syntax expected, or the range when the value is past the
// longest (or shortest) duration.
func parseDuration(s string) (time.Duration, error) {
	outOfRange := func(negative bool) error {
		if negative {
			return fmt.Errorf("out of range: a duration can be at least -%dd (%v), got %q", maxDays, time.Duration(math.MinInt64).Truncate(time.Second), s)
		}
		return fmt.Errorf("out of range: a duration can be at most %dd (%v), got %q", maxDays, time.Duration(math.MaxInt64).Truncate(time.Second), s)
	}
	if days, ok := strings.CutSuffix(s, "d"); ok && days != "" && strings.Trim(days, "0123456789") == "" {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n > maxDays {
			return 0, outOfRange(false)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		if durationSyntax.MatchString(s) {
			return 0, outOfRange(strings.HasPrefix(s, "-"))
		}
		return 0, fmt.Errorf("must be a duration such as 10s, 24h or 7d, got %q", s)
	}
	return d, nil
}

// parseByteSize reads "1073741824", "512MiB", "2GB", "100 KiB". Its errors
// are messages for the user, as parseDuration's.
func parseByteSize(s string) (int64, error) {
	num := strings.TrimSpace(s)
	unit := strings.TrimLeft(num, "0123456789")
	num = strings.TrimSpace(strings.TrimSuffix(num, unit))
	mult := map[string]int64{"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
		"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[strings.TrimSpace(unit)]
	if num == "" || mult == 0 {
		return 0, fmt.Errorf("must be a size such as 512MiB or 1GiB, got %q", s)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("out of range: a size can be at most %d bytes (%dTiB), got %q", int64(math.MaxInt64), int64(math.MaxInt64)>>40, s)
	}
	return n * mult, nil
}

// decode strictly decodes n, the node at path, into v, recording positions in
// src. It supports what Config holds: structs, slices, strings, ints, bools
// and durations.
func decode(src *source, n *yaml.Node, path string, v reflect.Value, errs *Errors) {
	fail := func(format string, args ...any) {
		*errs = append(*errs, &Error{File: src.file, Line: n.Line, Column: n.Column, Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	p := src.pos[path]
	p.line, p.col = n.Line, n.Column
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	p.set = n.ShortTag() != "!!null"
	src.pos[path] = p
	if !p.set {
		return // like an absent key
	}
	switch {
	case v.Type() == durationType:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" && n.ShortTag() != "!!int" {
			fail("must be a duration such as 10s, 24h or 7d, got %s", describe(n))
			return
		}
		d, err := parseDuration(n.Value)
		if err != nil {
			fail("%v", err)
			return
		}
		v.SetInt(int64(d))
	case v.Type() == byteSizeType:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" && n.ShortTag() != "!!int" && !isBigInt(n) {
			fail("must be a size such as 512MiB or 1GiB, got %s", describe(n))
			return
		}
		b, err := parseByteSize(n.Value)
		if err != nil {
			fail("%v", err)
			return
		}
		v.SetInt(b)
	case v.Type() == routeHeadersType:
		if n.Kind != yaml.MappingNode {
			fail("must be a mapping of header names to values, got %s", describe(n))
			return
		}
		seen := map[string]int{}
		var hs RouteHeaders
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			kp := join(path, k.Value)
			at := func(nd *yaml.Node, format string, args ...any) {
				*errs = append(*errs, &Error{File: src.file, Line: nd.Line, Column: nd.Column, Path: kp, Msg: fmt.Sprintf(format, args...)})
			}
			switch {
			case k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str":
				at(k, "header names must be strings, got %s", describe(k))
				continue
			case seen[k.Value] > 0:
				at(k, "duplicate header (first at line %d)", seen[k.Value])
				continue
			case val.Kind != yaml.ScalarNode || val.ShortTag() == "!!null":
				at(val, "must be a string, got %s", describe(val))
				continue
			}
			seen[k.Value] = k.Line
			src.pos[kp] = pos{line: val.Line, col: val.Column, keyLine: k.Line, keyCol: k.Column, set: true}
			hs = append(hs, RouteHeader{Name: k.Value, Value: val.Value})
		}
		v.Set(reflect.ValueOf(hs))
	case v.Type() == connectionsType && n.Kind == yaml.MappingNode:
		// One connection, written as a mapping: its keys keep the path
		// mqtt.url (a sequence's are mqtt[0].url, ...).
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		decodeStruct(src, n, path, v.Index(0), errs)
	case v.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			fail("must be a mapping, got %s", describe(n))
			return
		}
		decodeStruct(src, n, path, v, errs)
	case v.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode && v.Type() == connectionsType {
			fail("must be a mapping (one connection) or a sequence of them, got %s", describe(n))
			return
		}
		if n.Kind != yaml.SequenceNode {
			fail("must be a sequence, got %s", describe(n))
			return
		}
		v.Set(reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content)))
		for i, item := range n.Content {
			decode(src, item, fmt.Sprintf("%s[%d]", path, i), v.Index(i), errs)
		}
	case v.Kind() == reflect.String:
		if n.Kind != yaml.ScalarNode {
			fail("must be a string, got %s", describe(n))
			return
		}
		v.SetString(n.Value)
	case v.Kind() == reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			fail("must be true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	case v.Kind() == reflect.Int:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" && !isBigInt(n) {
			fail("must be an integer, got %s", describe(n))
			return
		}
		var i int64
		if isBigInt(n) || n.Decode(&i) != nil || v.OverflowInt(i) {
			fail("out of range: an integer can be from %d to %d, got %q", math.MinInt, math.MaxInt, n.Value)
			return
		}
		v.SetInt(i)
	default:
		panic("config: cannot decode into " + v.Type().String())
	}
}

// isBigInt reports whether n is an integer too large for YAML's int, which
// resolves as a number (!!float): it is out of range, not of another type.
func isBigInt(n *yaml.Node) bool {
	digits := strings.TrimPrefix(strings.TrimPrefix(n.Value, "-"), "+")
	return n.ShortTag() == "!!float" && digits != "" && strings.Trim(digits, "0123456789") == ""
}

func decodeStruct(src *source, n *yaml.Node, path string, v reflect.Value, errs *Errors) {
	t := v.Type()
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		keyErr := func(format string, args ...any) {
			*errs = append(*errs, &Error{File: src.file, Line: k.Line, Column: k.Column, Path: join(path, k.Value), Msg: fmt.Sprintf(format, args...)})
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			*errs = append(*errs, &Error{File: src.file, Line: k.Line, Column: k.Column, Path: path, Msg: fmt.Sprintf("keys must be strings, got %s", describe(k))})
			continue
		}
		if prev, ok := seen[k.Value]; ok {
			keyErr("duplicate key (first at line %d)", prev.Line)
			continue
		}
		seen[k.Value] = k
		f, ok := fieldByTag(t, k.Value)
		if !ok {
			keyErr("unknown key (valid keys: %s)", strings.Join(keys(t), ", "))
			continue
		}
		kp := join(path, k.Value)
		src.pos[kp] = pos{keyLine: k.Line, keyCol: k.Column}
		decode(src, val, kp, v.FieldByIndex(f.Index), errs)
	}
}

func tagName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

func fieldByTag(t reflect.Type, key string) (reflect.StructField, bool) {
	for _, f := range reflect.VisibleFields(t) {
		if name := tagName(f); name != "" && name != "-" && name == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func keys(t reflect.Type) []string {
	var out []string
	for _, f := range reflect.VisibleFields(t) {
		if name := tagName(f); name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// describe names a node's kind and, for a short scalar, its value, for
// messages like "must be an integer, got string "abc"".
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a sequence"
	case yaml.AliasNode:
		return describe(n.Alias)
	}
	kind := map[string]string{
		"!!str": "string", "!!int": "integer", "!!float": "number", "!!bool": "boolean",
		"!!null": "null", "!!timestamp": "timestamp", "!!binary": "binary",
	}[n.ShortTag()]
	if kind == "" {
		kind = n.ShortTag()
	}
	if len(n.Value) > 40 {
		return kind
	}
	return fmt.Sprintf("%s %q", kind, n.Value)
}
