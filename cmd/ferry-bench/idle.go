package main

import (
	"context"
	"fmt"
	"os"
	"time"
)

// runIdle measures ferry with nothing to do: connected, subscribed, no
// messages, for opts.Idle after opts.Settle.
func (b *bench) runIdle(ctx context.Context) (*idleResult, error) {
	f, admin, err := b.startConfiguredFerry(ctx)
	if err != nil {
		return nil, err
	}
	defer f.stop(5 * time.Second)
	if err := sleepCtx(ctx, b.opts.Settle); err != nil {
		return nil, err
	}
	m0, _ := scrapeMetrics(admin)
	var fileStart int64 = -1
	if st, err := os.Stat(b.bufferPath()); err == nil {
		fileStart = st.Size()
	}
	w, err := beginWindow(f.pid(), b.brokerPID)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	peakAnon := w.start.Anon
	for time.Since(start) < b.opts.Idle {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-f.exited:
			return nil, fmt.Errorf("ferry exited while idle: %v; last output:\n%s", f.waitErr, f.lastLines())
		case <-tick.C:
		}
		if s, err := sampleProc(f.pid()); err == nil {
			peakAnon = max(peakAnon, s.Anon)
			el := time.Since(start)
			b.progress.line(fmt.Sprintf("idle %5.0fs / %v  ferry cpu %.3f s (%.2f%%)  rss %.0f MB",
				el.Seconds(), b.opts.Idle, (s.CPU - w.start.CPU).Seconds(), 100*(s.CPU-w.start.CPU).Seconds()/el.Seconds(), mb(s.RSS)))
		}
	}
	if err := w.end(f.pid()); err != nil {
		return nil, err
	}
	if b.ioProbe != nil && w.IO.Err == nil {
		w.IO.Err = b.ioProbe
	}
	res := &idleResult{win: w, fileGrowth: -1, peakAnon: peakAnon}
	if m0 != nil {
		if m1, err := scrapeMetrics(admin); err == nil {
			res.metrics = map[string]float64{}
			for k, v := range m1 {
				res.metrics[k] = v - m0[k]
			}
		}
	}
	if st, err := os.Stat(b.bufferPath()); err == nil && fileStart >= 0 {
		res.fileGrowth = st.Size() - fileStart
	}
	b.progress.clear()
	if err := f.stop(ferryStopTimeout); err != nil {
		res.problems = append(res.problems, fmt.Sprintf("ferry did not stop cleanly: %v", err))
	}
	return res, nil
}

// idleResult is what an idle measurement found.
type idleResult struct {
	win        *window
	peakAnon   int64
	metrics    map[string]float64
	fileGrowth int64
	problems   []string
}
