package main

import (
	"fmt"
	"io"
	"os"
)

// progress writes a status line to stderr: rewritten in place on a
// terminal, one line per update otherwise.
type progress struct {
	w    io.Writer
	tty  bool
	dirt int // length of the line on screen
}

func newProgress(w io.Writer, quiet bool) *progress {
	if quiet {
		return &progress{w: io.Discard}
	}
	p := &progress{w: w}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) line(s string) {
	if !p.tty {
		fmt.Fprintln(p.w, s)
		return
	}
	pad := max(p.dirt-len(s), 0)
	fmt.Fprintf(p.w, "\r%s%*s", s, pad, "")
	p.dirt = len(s)
}

// clear ends the status line.
func (p *progress) clear() {
	if p.tty && p.dirt > 0 {
		fmt.Fprintf(p.w, "\r%*s\r", p.dirt, "")
		p.dirt = 0
	}
}
