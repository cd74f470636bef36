package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/buffer"
)

var randN = rand.N[time.Duration]

// noWait makes Read return what the buffer holds without waiting.
var noWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// errNoOutcome is a produced record franz-go gave no answer for.
var errNoOutcome = errors.New("the producer gave no answer for the record")

// errSource marks a failure to read the buffer: Run returns it.
var errSource = errors.New("read buffer")

// pass is Run's state: the window, the chunk in flight and what the last
// failures taught. Only Run's goroutine uses it.
type pass struct {
	f  *Forwarder
	cl *kgo.Client
	w  *window

	after uint64          // highest sequence number read into the window
	recs  []buffer.Record // scratch for Read
	vals  []string        // scratch for captures
	chunk []*slot         // the chunk being produced
	slab  []slot          // slots not used yet
	kept  []*slot         // scratch for fill

	// probe, when cands is not empty, is a search in progress: Kafka
	// refused a batch for good, and the record to blame is one of cands
	// (ascending sequence numbers, one partition). Each chunk goes only up
	// to the candidate the search is at (see pick and bisect).
	probe struct {
		cands []uint64
		// step > 0: galloping, the next probe takes the first step
		// candidates (1, 2, 4, ...: a bad record near the front, or a
		// run of them, is found in a few small chunks); 0: halving.
		step int
	}
	// refusals counts, per topic, the records dead-lettered in a row for
	// a topic-level refusal (TOPIC_AUTHORIZATION_FAILED,
	// INVALID_TOPIC_EXCEPTION in a produce response); at
	// topicRefusalRun the whole topic is taken as refused.
	refusals map[string]int
	// known holds the topics whose metadata Kafka gave: the others are
	// looked up before a chunk goes out (checkTopics), so that a missing
	// or refused topic never holds a chunk up.
	known map[string]bool
	// parked holds the topics Kafka said do not exist (see park.go):
	// their records wait outside the window, as sequence numbers.
	parked      map[string]*parkedTopic
	parkedSince map[string]time.Time // when topics rerouted (see reroute) went missing

	routes    []Route // the routes in force for this pass (see followRoutes)
	routesGen uint64  // the forwarder's routesGen they came with

	attempt int       // consecutive chunks that failed with a retriable error
	acked   bool      // a chunk went through: Kafka has answered this pass
	waitTil time.Time // no chunk before this (backoff)

	capped capChunks // chunks measured for the byte-rate cap (see ratelimit.go)
}

func newPass(f *Forwarder, cl *kgo.Client) *pass {
	return &pass{
		f: f, cl: cl,
		w:           newWindow(windowFloor(f.cfg)), // until Kafka answers
		parked:      map[string]*parkedTopic{},
		parkedSince: map[string]time.Time{},
		known:       map[string]bool{},

		refusals: map[string]int{},
	}
}

// maxRead is the most records one Read returns.
const maxRead = 1000

// slabSize is how many slots are allocated at once.
const slabSize = 256

// run is Run's loop: fill the window, produce a chunk, wait for every
// outcome, act on the failures, release, again.
func (p *pass) run(ctx context.Context) error {
	wait := backoff(250*time.Millisecond, 30*time.Second)
	for {
		p.followRoutes()
		p.sizeWindow()
		// With records ready to go (and no Linger to wait out), the next
		// chunk goes out at once and the window is topped up while it is
		// in flight (see produce); otherwise wait here for records.
		if p.f.cfg.Linger > 0 || !p.hasWork() {
			if err := p.fill(ctx, false); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if d := time.Until(p.waitTil); d > 0 {
			if !sleep(ctx, d) {
				return nil
			}
		}
		p.tendParked(ctx, time.Now())
		p.release()
		p.pick()
		if p.checkTopics(ctx) {
			p.pick()
		}
		if len(p.chunk) == 0 {
			// Everything waiting is held back (a parked topic): fill
			// waits for records or the next retry, unless the window is
			// full or records wait, then this does.
			if (p.w.full() || p.hasWork()) && !sleep(ctx, p.untilRetry()) {
				return nil
			}
			continue
		}
		if ctx.Err() != nil || !p.pace(ctx) {
			return nil
		}
		if !p.produce(ctx) {
			return nil // stopping; produce waited what it could
		}
		retriable := p.settle(time.Now())
		p.release()
		if retriable != nil {
			p.attempt++
			p.f.retries.Add(1)
			p.f.setError(retriable)
			p.waitTil = time.Now().Add(wait(p.attempt))
		} else {
			p.attempt, p.acked = 0, true
		}
	}
}

// sizeWindow bounds the window: sized to the link (linkWindow) within the
// configured MaxBufferedRecords and MaxBufferedBytes while Kafka answers;
// by the floor (windowFloor) until a chunk first went through, while Kafka
// does not answer (unreachable, not acknowledging) and while a failed
// chunk waits for its retry.
func (p *pass) sizeWindow() {
	if !p.acked || p.attempt > 0 || !p.f.kafka.answering() {
		p.w.maxRecords, p.w.maxBytes = windowFloor(p.f.cfg)
		return
	}
	p.w.maxRecords, p.w.maxBytes = linkWindow(p.f.cfg, p.f.rtt.longest())
}

// fill reads records into the window while it has room. It waits for
// records only when the window has nothing to produce; then it also
// wakes up for the next parked topic's retry. With prefetch it only takes
// what the buffer holds now, and never waits.
func (p *pass) fill(ctx context.Context, prefetch bool) error {
	work := prefetch || p.hasWork()
	for {
		p.followRoutes()
		work = work || p.draining() // a draining topic is fed after fill: do not wait here
		records, room := p.w.room()
		if records == 0 || room == 0 {
			return nil
		}
		readCtx, cancel := ctx, func() {}
		if work {
			readCtx = noWait // only what is there now: never wait while records wait to go
		} else if next, ok := p.nextRetry(); ok {
			readCtx, cancel = context.WithDeadline(ctx, next)
		}
		var err error
		p.recs, err = p.f.src.Read(readCtx, p.after, min(records, maxRead), room, p.recs)
		cancel()
		if err != nil {
			if readCtx == ctx || ctx.Err() != nil {
				return fmt.Errorf("forward: %w: %w", errSource, err)
			}
			if work && !prefetch {
				return p.linger(ctx) // nothing more now
			}
			return nil // nothing more now, or a parked topic's retry is due
		}
		p.followRoutes() // records read now follow the routes in force now
		kept, setAside := p.kept[:0], false
		now := time.Now()
		for i := range p.recs {
			switch s := p.admit(&p.recs[i], now); {
			case s == nil:
				setAside = true
			case s.state == pending:
				work = true
				kept = append(kept, s)
			}
		}
		if setAside { // a Read's payloads share one block: do not let a few keep it all
			for _, s := range kept {
				s.rec.Value = bytes.Clone(s.rec.Value)
			}
		}
		clear(kept)
		p.kept = kept
		clear(p.recs) // drop references to payloads the window holds now
	}
}

// linger waits Linger, when the window is not full, and then takes what
// came meanwhile: one wakeup per Linger, not one per record.
func (p *pass) linger(ctx context.Context) error {
	if p.f.cfg.Linger <= 0 || p.w.full() || !sleep(ctx, p.f.cfg.Linger) {
		return nil
	}
	return p.fill(ctx, true)
}

// admit routes rec into the window and returns its slot. A record that
// matches no route or a Drop route, is too large or would go to an
// invalid topic is settled at once; one for a parked topic joins that
// topic's list instead (nil).
func (p *pass) admit(rec *buffer.Record, now time.Time) *slot {
	f := p.f
	p.after = rec.Seq
	if len(p.slab) == 0 {
		p.slab = make([]slot, slabSize) // one allocation for many records
	}
	s := &p.slab[0] // taken only if the record enters the window
	res, vals := f.route(p.routes, rec, now, &s.rec, s.hdrs[:0], s.buf[:0], p.vals)
	p.vals = vals
	routed := res == routed
	if routed && len(p.parked) > 0 {
		pt := p.parked[rerouteKey] // while a reroute drains, everything waits behind it
		if pt == nil && validTopic(s.rec.Topic) == nil {
			pt = p.parked[s.rec.Topic]
		}
		if pt != nil {
			pt.seqs = append(pt.seqs, rec.Seq) // waits with the topic's other records
			s.rec = kgo.Record{}
			return nil
		}
	}
	p.slab = p.slab[1:]
	s.seq = rec.Seq
	var kr *kgo.Record
	if routed {
		kr = &s.rec
		s.kr = kr
		s.size = recordSize(kr)
	}
	p.w.add(s)
	switch {
	case res == dropped:
		s.state = settled
		f.droppedByRoute.Add(1)
	case kr == nil:
		s.state = settled
		p.countUnrouted(rec)
	case s.size > f.cfg.MaxRecordBytes:
		p.deadLetter(s, ReasonTooLarge, fmt.Errorf("record of %d bytes exceeds the %d-byte limit", s.size, f.cfg.MaxRecordBytes))
	default:
		if err := validTopic(kr.Topic); err != nil {
			p.deadLetter(s, ReasonInvalidTopic, fmt.Errorf("MQTT topic %q: %w", rec.Topic, err))
		}
	}
	return s
}

// countUnrouted counts and logs (rate-limited) a record no route matches.
func (p *pass) countUnrouted(rec *buffer.Record) {
	n := p.f.unrouted.Add(1)
	if n&(n-1) == 0 { // 1, 2, 4, 8, ...: rate-limited
		p.f.log.Warn("record matches no route; dropped", "mqtt_topic", rec.Topic, "seq", rec.Seq, "dropped_total", n)
	}
}

// hasWork reports whether the window holds a record to produce.
func (p *pass) hasWork() bool {
	for _, s := range p.w.slots {
		if s.state == pending {
			return true
		}
	}
	return false
}

// pick chooses the chunk: the pending records in window order (a parked
// topic's are not in the window), during a search only up to the
// candidate it is at; at most half the window, so that the next chunk is
// read while this one is in flight, and with a byte-rate cap at most about
// half a second of it.
func (p *pass) pick() {
	clear(p.chunk) // the last chunk's slots may have left the window: do not keep them
	p.chunk = p.chunk[:0]
	cut := ^uint64(0)
	p.probe.cands = p.stillPending(p.probe.cands) // candidates settled meanwhile are out
	if c := p.probe.cands; len(c) > 0 {
		k := (len(c) + 1) / 2
		if p.probe.step > 0 {
			k = min(p.probe.step, len(c))
		}
		cut = c[k-1]
	}
	maxRecords, maxBytes := max(p.w.maxRecords/2, 1), p.w.maxBytes/2
	if p.f.rate != nil {
		maxBytes = min(maxBytes, p.capBytes())
	}
	bytes := 0
	for _, s := range p.w.slots {
		if s.seq > cut || len(p.chunk) == maxRecords || len(p.chunk) > 0 && bytes+s.size > maxBytes {
			break
		}
		if s.state == pending {
			p.chunk = append(p.chunk, s)
			bytes += s.size
		}
	}
}

// produce hands the chunk to the client and flushes it: every record gets
// its outcome before produce returns true. When ctx ends first, it waits
// up to ShutdownTimeout, releases what Kafka acknowledged and returns
// false; the rest stays in the buffer.
func (p *pass) produce(ctx context.Context) bool {
	f := p.f
	f.chunks.Add(1)
	if f.inflight.Add(int64(len(p.chunk))) == int64(len(p.chunk)) {
		f.lastAck.Store(monoNow()) // the wait starts now
	}
	for _, s := range p.chunk {
		s.state, s.done, s.err = sent, false, nil
		s.kr.Partition = -1 // set by the client once the record has a partition
		p.cl.Produce(context.Background(), s.kr, func(r *kgo.Record, err error) {
			f.inflight.Add(-1)
			if err == nil {
				f.delivered.Add(1)
				f.lastAck.Store(monoNow())
				f.clearError()
			}
			p.w.finish(s, r, err)
		})
	}
	// Flush sends the chunk and waits for every outcome; meanwhile the
	// next chunk is read from the buffer and routed.
	flushed := make(chan error, 1)
	go func() { flushed <- p.cl.Flush(ctx) }()
	prefetchErr := p.fill(ctx, true)
	if err := <-flushed; err == nil {
		if prefetchErr != nil && ctx.Err() == nil {
			p.f.log.Warn("reading ahead in the buffer failed; will read again", "err", prefetchErr)
		}
		return true
	}
	fctx, cancel := context.WithTimeout(context.Background(), f.cfg.ShutdownTimeout)
	defer cancel()
	if err := p.cl.Flush(fctx); err != nil {
		f.log.Warn("records still in flight at shutdown; they stay in the buffer and are produced again at the next start, with the same identity headers",
			"in_flight", f.inflight.Load())
	}
	for _, s := range p.chunk {
		if done, _, err := p.w.outcome(s); done && err == nil {
			s.state = acked
		}
	}
	p.release()
	return false
}

// release hands the window's settled prefix back to the source, and the
// records done behind a record that still waits (a parked topic, a
// bisection, a backoff) too, one by one: so they neither fill the window
// nor go to Kafka again after a restart. (Removing a dead-lettered record
// is a no-op: the buffer applies dead letters first.)
func (p *pass) release() {
	if seq := p.w.popReleasable(p.parkedFloor()); seq > 0 {
		p.f.src.Release(seq)
	}
	if seqs := p.w.popAcked(); len(seqs) > 0 {
		p.f.src.Remove(seqs...)
	}
}

// sleep waits d or until ctx is done; false if ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
