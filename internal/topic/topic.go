// Package topic matches MQTT topic names against filters whose levels may
// capture values, and expands templates with the captured values.
//
// A Pattern is an MQTT topic filter (MQTT 5.0 section 4.7) in which a level
// may also be "{name}": it matches exactly one level, like "+", and captures
// that level under name. A "#" last level captures the rest of the topic
// (the levels it matched, joined by '/'; "" when it matched none) under the
// name "#", so a template can use it as {#}. Matching follows MQTT: "+" matches one level (which
// may be empty), "#" as the last level matches any number of levels including
// none (so "a/#" matches "a"), and a topic name starting with '$' is never
// matched by a filter whose first level is a wildcard.
//
// Patterns and templates are immutable once parsed and safe for concurrent
// use. Pattern.Match does not allocate when given a vals slice with enough
// capacity.
package topic

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxLen is the longest topic filter MQTT can carry (a UTF-8 string with a
// 16-bit length prefix).
const maxLen = 65535

type levelKind uint8

const (
	literal levelKind = iota
	plus              // "+"
	capture           // "{name}"
	hash              // "#", always the last level
)

type level struct {
	kind levelKind
	text string // the literal text, or the capture name
}

// Pattern is an MQTT topic filter in which a level may be "{name}": it
// matches one level like "+" and captures it. Create one with ParsePattern.
type Pattern struct {
	src    string
	filter string
	names  []string
	levels []level
}

// ParsePattern parses and validates s. It rejects an empty pattern, a NUL
// character, invalid UTF-8, "#" anywhere but as the whole last level, "+"
// or braces anywhere but as a whole level, a capture name that is not
// [A-Za-z0-9_]+, and a name captured twice. The error says what is wrong
// and at which level (counted from 1).
func ParsePattern(s string) (*Pattern, error) {
	if err := checkString("pattern", s); err != nil {
		return nil, err
	}
	p := &Pattern{src: s}
	var filter strings.Builder
	n := strings.Count(s, "/") + 1
	p.levels = make([]level, 0, n)
	for i, lv := range strings.Split(s, "/") {
		bad := func(msg string, args ...any) error {
			return fmt.Errorf("invalid topic pattern %q: level %d %q: %s", s, i+1, lv, fmt.Sprintf(msg, args...))
		}
		if i > 0 {
			filter.WriteByte('/')
		}
		switch {
		case lv == "#":
			if i != n-1 {
				return nil, bad("'#' must be the last level")
			}
			p.names = append(p.names, RestName)
			p.levels = append(p.levels, level{kind: hash})
			filter.WriteByte('#')
			continue
		case lv == "+":
			p.levels = append(p.levels, level{kind: plus})
			filter.WriteByte('+')
			continue
		case strings.HasPrefix(lv, "{") && strings.HasSuffix(lv, "}") && len(lv) >= 2:
			name := lv[1 : len(lv)-1]
			if !validName(name) {
				return nil, bad("capture name must be one or more of [A-Za-z0-9_]")
			}
			for _, prev := range p.names {
				if prev == name {
					return nil, bad("name %q is captured twice", name)
				}
			}
			p.names = append(p.names, name)
			p.levels = append(p.levels, level{kind: capture, text: name})
			filter.WriteByte('+')
			continue
		}
		switch {
		case strings.Contains(lv, "#"):
			return nil, bad("'#' must be a whole level")
		case strings.Contains(lv, "+"):
			return nil, bad("'+' must be a whole level")
		case strings.ContainsAny(lv, "{}"):
			return nil, bad("braces must enclose a whole level, as in {name}")
		}
		p.levels = append(p.levels, level{kind: literal, text: lv})
		filter.WriteString(lv)
	}
	p.filter = filter.String()
	return p, nil
}

// String returns the pattern as it was parsed.
func (p *Pattern) String() string { return p.src }

// Filter returns the plain MQTT filter, with each "{name}" replaced by "+";
// subscribe with it.
func (p *Pattern) Filter() string { return p.filter }

// RestName is the name under which a "#" last level captures the rest of
// the topic: {#} in a template.
const RestName = "#"

// Names returns the capture names in level order, RestName last when the
// pattern ends in "#". The caller must not modify the returned slice.
func (p *Pattern) Names() []string { return p.names }

// Match reports whether topic, an MQTT topic name, matches p. It appends the
// captured levels, in Names order, to vals[:0] and returns the result; on no
// match it returns vals[:0]. The captured strings share topic's memory. Pass
// a slice with capacity len(p.Names()) to match without allocating. Wildcard
// characters in topic have no special meaning: topic is taken as a name.
func (p *Pattern) Match(topic string, vals []string) ([]string, bool) {
	vals = vals[:0]
	if topic == "" {
		return vals, false
	}
	if topic[0] == '$' && p.levels[0].kind != literal {
		return vals, false
	}
	rest, done := topic, false
	for _, l := range p.levels {
		if l.kind == hash {
			return append(vals, rest), true // "" when done: "a/#" matched "a"
		}
		if done {
			return vals[:0], false // the topic has fewer levels
		}
		var lv string
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			lv, rest = rest[:i], rest[i+1:]
		} else {
			lv, rest, done = rest, "", true
		}
		switch l.kind {
		case literal:
			if lv != l.text {
				return vals[:0], false
			}
		case capture:
			vals = append(vals, lv)
		}
	}
	if !done {
		return vals[:0], false // the topic has more levels
	}
	return vals, true
}

// ValidFilter reports whether f is a valid plain MQTT topic filter: not
// empty, no NUL, valid UTF-8, at most 65535 bytes, "+" only as a whole level
// and "#" only as the whole last level. Braces have no special meaning here.
func ValidFilter(f string) error {
	if err := checkString("filter", f); err != nil {
		return err
	}
	levels := strings.Split(f, "/")
	for i, lv := range levels {
		var msg string
		switch {
		case lv == "+" || lv == "#" && i == len(levels)-1:
			continue
		case lv == "#":
			msg = "'#' must be the last level"
		case strings.Contains(lv, "#"):
			msg = "'#' must be a whole level"
		case strings.Contains(lv, "+"):
			msg = "'+' must be a whole level"
		default:
			continue
		}
		return fmt.Errorf("invalid topic filter %q: level %d %q: %s", f, i+1, lv, msg)
	}
	return nil
}

// Overlap reports whether some topic name could match both plain filters a
// and b. Both must be valid (see ValidFilter); otherwise the result is
// unspecified.
func Overlap(a, b string) bool {
	first := true
	for {
		la, ra, endA := cut(a)
		lb, rb, endB := cut(b)
		if first {
			// A topic matching a literal "$..." first level is not matched
			// by a leading wildcard in the other filter.
			if isWild(la) && strings.HasPrefix(lb, "$") || isWild(lb) && strings.HasPrefix(la, "$") {
				return false
			}
			first = false
		}
		if la == "#" || lb == "#" {
			return true
		}
		if la != lb && la != "+" && lb != "+" {
			return false
		}
		switch {
		case endA && endB:
			return true
		case endA:
			return rb == "#" // "a" and "a/#" share the topic "a"
		case endB:
			return ra == "#"
		}
		a, b = ra, rb
	}
}

// Covers reports whether the plain filter a matches every topic name that
// the plain filter b matches: a route with filter a shadows a later one
// with filter b completely. Both must be valid (see ValidFilter).
func Covers(a, b string) bool {
	first := true
	for {
		la, ra, endA := cut(a)
		lb, rb, endB := cut(b)
		if first {
			// b may match topics starting with '$' only through a literal
			// first level; a leading wildcard never matches those.
			if isWild(la) && strings.HasPrefix(lb, "$") {
				return false
			}
			first = false
		}
		switch {
		case la == "#":
			return true
		case lb == "#", la != "+" && la != lb:
			return false
		}
		switch {
		case endA && endB:
			return true
		case endA:
			return false // b's topics have more levels
		case endB:
			return ra == "#" // "a/#" matches "a"
		}
		a, b = ra, rb
	}
}

func cut(s string) (lv, rest string, end bool) {
	if i := strings.IndexByte(s, '/'); i >= 0 {
		return s[:i], s[i+1:], false
	}
	return s, "", true
}

func isWild(lv string) bool { return lv == "+" || lv == "#" }

func checkString(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("invalid topic %s: empty", what)
	case len(s) > maxLen:
		return fmt.Errorf("invalid topic %s: %d bytes long, the limit is %d", what, len(s), maxLen)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("invalid topic %s %q: contains a NUL character", what, s)
	case !utf8.ValidString(s):
		return fmt.Errorf("invalid topic %s %q: not valid UTF-8", what, s)
	}
	return nil
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// sharePrefix starts a shared subscription's filter (MQTT 5.0 section
// 4.8.2): "$share/{group}/{filter}".
const sharePrefix = "$share/"

// SplitShared splits a shared subscription's filter "$share/group/filter"
// into its group and the plain filter that topics are matched against. For
// any other filter it returns "", f, false. It does not validate either
// part (see ValidSubscription).
func SplitShared(f string) (group, filter string, shared bool) {
	rest, ok := strings.CutPrefix(f, sharePrefix)
	if !ok {
		return "", f, false
	}
	group, filter, _ = strings.Cut(rest, "/")
	return group, filter, true
}

// ValidSubscription is ValidFilter for what a SUBSCRIBE may carry: a plain
// filter, or a shared subscription "$share/group/filter" whose group is not
// empty and holds no '/', '+' or '#', and whose filter is valid.
func ValidSubscription(f string) error {
	group, filter, shared := SplitShared(f)
	if !shared {
		// Brokers' own prefixes (EMQX's $queue/ and $exclusive/) deliver
		// topics the filter as written does not match: ferry would take
		// them for messages of a removed filter.
		for _, prefix := range []string{"$queue/", "$exclusive/"} {
			if strings.HasPrefix(f, prefix) {
				return fmt.Errorf("%q: the broker-specific prefix %s is not supported; for a shared subscription use $share/<group>/<filter>", f, prefix)
			}
		}
		return ValidFilter(f)
	}
	switch {
	case group == "" && filter == "":
		return fmt.Errorf("invalid shared subscription %q: want $share/<group>/<filter>", f)
	case group == "" || strings.ContainsAny(group, "+#"):
		return fmt.Errorf("invalid shared subscription %q: the group name must not be empty or hold '+' or '#'", f)
	case filter == "":
		return fmt.Errorf("invalid shared subscription %q: no filter after the group name", f)
	}
	if err := ValidFilter(filter); err != nil {
		return fmt.Errorf("shared subscription %q: %w", f, err)
	}
	return nil
}

// MatchFilter reports whether topic, an MQTT topic name, matches the plain
// MQTT filter f (valid, see ValidFilter), as a broker matches it. It does
// not allocate.
func MatchFilter(f, topic string) bool {
	if topic == "" {
		return false
	}
	if topic[0] == '$' && (f[0] == '+' || f[0] == '#') {
		return false
	}
	for {
		fl, frest, fend := cut(f)
		if fl == "#" {
			return true
		}
		tl, trest, tend := cut(topic)
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case fend && tend:
			return true
		case fend:
			return false // the topic has more levels
		case tend:
			return frest == "#" // "a/#" matches "a"
		}
		f, topic = frest, trest
	}
}
