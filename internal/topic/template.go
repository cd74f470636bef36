package topic

import (
	"fmt"
	"strings"
)

// Template is a string with {name} placeholders, e.g. "telemetry.{device}",
// that Expand fills with values captured by a Pattern ({#} for the rest
// of the topic that a "#" level matched). Braces always delimit
// a placeholder; a template cannot produce a literal brace. Create one with
// ParseTemplate.
type Template struct {
	src   string
	parts []part
	size  int // total length of the literal parts
}

// part is a literal text (idx < 0) or a placeholder for vals[idx].
type part struct {
	text string
	idx  int
}

// ParseTemplate parses s, whose placeholders must each be one of names; a
// placeholder's value is the element of Expand's vals at the index of its
// name in names. It fails on an unknown or malformed name and on an
// unbalanced brace. An empty s is a valid, static template.
func ParseTemplate(s string, names []string) (*Template, error) {
	t := &Template{src: s}
	rest := s
	for rest != "" {
		open := strings.IndexAny(rest, "{}")
		if open < 0 {
			t.addText(rest)
			break
		}
		if rest[open] == '}' {
			return nil, fmt.Errorf("invalid template %q: '}' without '{' at offset %d", s, len(s)-len(rest)+open)
		}
		t.addText(rest[:open])
		end := strings.IndexAny(rest[open+1:], "{}")
		if end < 0 || rest[open+1+end] != '}' {
			return nil, fmt.Errorf("invalid template %q: '{' without '}' at offset %d", s, len(s)-len(rest)+open)
		}
		name := rest[open+1 : open+1+end]
		if name != RestName && !validName(name) {
			return nil, fmt.Errorf("invalid template %q: placeholder {%s}: name must be one or more of [A-Za-z0-9_]", s, name)
		}
		idx := -1
		for i, n := range names {
			if n == name {
				idx = i
				break
			}
		}
		if idx < 0 {
			return nil, fmt.Errorf("invalid template %q: placeholder {%s} is not captured by the pattern (captures: %s)", s, name, listNames(names))
		}
		t.parts = append(t.parts, part{idx: idx})
		rest = rest[open+1+end+1:]
	}
	return t, nil
}

func (t *Template) addText(s string) {
	if s != "" {
		t.parts = append(t.parts, part{text: s, idx: -1})
		t.size += len(s)
	}
}

func listNames(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return "{" + strings.Join(names, "}, {") + "}"
}

// String returns the template as it was parsed.
func (t *Template) String() string { return t.src }

// IsStatic reports whether t has no placeholders, so Expand always returns
// the same string.
func (t *Template) IsStatic() bool {
	for _, p := range t.parts {
		if p.idx >= 0 {
			return false
		}
	}
	return true
}

// Expand returns t with each placeholder replaced by its value in vals,
// which is aligned with the names given to ParseTemplate (as returned by
// Pattern.Match for the Pattern's Names). It panics if vals is too short.
// A static template is returned without allocating.
func (t *Template) Expand(vals []string) string {
	switch {
	case len(t.parts) == 0:
		return ""
	case len(t.parts) == 1 && t.parts[0].idx < 0:
		return t.parts[0].text
	case len(t.parts) == 1:
		return vals[t.parts[0].idx]
	}
	n := t.size
	for _, p := range t.parts {
		if p.idx >= 0 {
			n += len(vals[p.idx])
		}
	}
	var b strings.Builder
	b.Grow(n)
	for _, p := range t.parts {
		if p.idx >= 0 {
			b.WriteString(vals[p.idx])
		} else {
			b.WriteString(p.text)
		}
	}
	return b.String()
}

// GatewayName is the placeholder for the gateway id in ferry's route
// templates: {gateway_id}. A pattern whose templates use it must not
// capture a level under that name.
const GatewayName = "gateway_id"

// TemplateNames are the names a route's templates may use with match:
// its captures, then GatewayName. A nil match stands for a default route,
// which matches every topic and captures all of it as {#}.
func TemplateNames(match *Pattern) []string {
	if match == nil {
		return []string{RestName, GatewayName}
	}
	return append(match.Names()[:len(match.Names()):len(match.Names())], GatewayName)
}
