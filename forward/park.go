package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/buffer"
)

// A topic that does not exist is parked: its records leave the window and
// wait in the buffer, the window keeping only their sequence numbers, so
// that however many there are they hold back no other topic. The topic is
// looked up again with backoff. When it exists, it drains: its records are
// read back from the buffer into the window, oldest first, as room allows,
// while its new records keep joining the list behind them (so they stay in
// order). When it has been missing for UnknownTopicTimeout, its records are
// dead-lettered. Nothing at or above the oldest parked record is released
// by prefix; records delivered past it are removed one by one.
type parkedTopic struct {
	since, retryAt time.Time
	attempt        int
	err            error
	// seqs are the topic's records outside the window, ascending.
	seqs []uint64
	// draining: the topic exists again; seqs go back into the window.
	draining bool
}

// park takes a missing topic's records out of the window and schedules a
// lookup with backoff.
func (p *pass) park(topic string, err error, now time.Time) {
	pt := p.parked[topic]
	if pt == nil || pt.draining {
		if pt == nil {
			pt = &parkedTopic{}
			p.parked[topic] = pt
		}
		pt.since, pt.draining, pt.attempt = now, false, 0
		if since, ok := p.parkedSince[topic]; ok { // parked before a reroute: still missing since then
			pt.since = since
			delete(p.parkedSince, topic)
		}
		p.f.log.Error("Kafka topic does not exist; its records wait in the buffer, other topics go on",
			"topic", topic, "dead_letter_after", p.f.cfg.UnknownTopicTimeout, "err", err)
	}
	pt.attempt++
	pt.err = err
	pt.retryAt = now.Add(backoff(time.Second, 30*time.Second)(pt.attempt))
	delete(p.known, topic) // its retry starts with a metadata request, not a produce
	out := p.w.evict(func(s *slot) bool { return s.state == pending && s.kr.Topic == topic })
	if len(out) > 0 {
		seqs := make([]uint64, 0, len(out)+len(pt.seqs))
		for _, s := range out {
			seqs = append(seqs, s.seq)                        // all below pt.seqs: fed from its front, or read before
			s.state, s.kr, s.rec = settled, nil, kgo.Record{} // out of the window for good
		}
		pt.seqs = append(seqs, pt.seqs...)
	}
	p.countParked()
	p.f.setError(err)
}

// countParked publishes how many topics wait for Kafka (not draining), so
// an acknowledgement does not clear their error.
func (p *pass) countParked() {
	n := 0
	for _, pt := range p.parked {
		if !pt.draining {
			n++
		}
	}
	p.f.parkedTopics.Store(int64(n))
}

// tendParked looks up the parked topics whose retry is due, dead-letters
// the records of those missing for too long, and feeds the draining ones
// back into the window.
func (p *pass) tendParked(ctx context.Context, now time.Time) {
	var due []string
	for t, pt := range p.parked {
		switch {
		case pt.draining:
		case p.f.cfg.UnknownTopicTimeout > 0 && now.Sub(pt.since) >= p.f.cfg.UnknownTopicTimeout:
			err := fmt.Errorf("topic %q did not exist for %v: %w", t, p.f.cfg.UnknownTopicTimeout, pt.err)
			for _, seq := range pt.seqs {
				p.deadLetterSeq(seq, ReasonUnknownTopic, err)
			}
			delete(p.parked, t)
		case !now.Before(pt.retryAt):
			due = append(due, t)
		}
	}
	if len(due) > 0 {
		found, _ := p.lookup(ctx, due)
		now := time.Now() // the lookup may have taken seconds
		for _, t := range due {
			pt := p.parked[t]
			kerrv, answered := found[t]
			if !answered { // Kafka did not answer: later
				pt.attempt++
				pt.retryAt = now.Add(backoff(time.Second, 30*time.Second)(pt.attempt))
				continue
			}
			switch class, reason := classify(kerrv); {
			case kerrv == nil || class == retry:
				// It exists (a retriable answer such as
				// LEADER_NOT_AVAILABLE says so too): the producer
				// waits for its leader.
				pt.draining = true
				p.known[t] = true
				p.f.log.Info("Kafka topic exists now; its waiting records go out", "topic", t, "records", len(pt.seqs))
			case class == missingTopic:
				p.park(t, fmt.Errorf("topic %q: %w", t, kerrv), now)
			default: // refused
				err := fmt.Errorf("topic %q: %w", t, kerrv)
				for _, seq := range pt.seqs {
					p.deadLetterSeq(seq, reason, err)
				}
				delete(p.parked, t)
			}
		}
	}
	p.feed(ctx)
	p.countParked()
}

// followRoutes takes up routes SetRoutes set since the last call: the pass
// routes by its own copy, changed only here, together with the reroute of
// what waits, so no record routed by new routes overtakes one that waits.
func (p *pass) followRoutes() {
	gen := p.f.routesGen.Load()
	if gen == p.routesGen {
		return
	}
	first := p.routes == nil
	p.routesGen, p.routes = gen, *p.f.routes.Load() // at least as new as gen
	if !first {
		p.reroute()
	}
}

// rerouteKey names the backlog of records to route anew after SetRoutes:
// no topic is called "".
const rerouteKey = ""

// reroute puts every parked record into one backlog, to be read back and
// routed by the new routes, in sequence order; until it has drained,
// records read from the buffer join it too (see admit), so nothing routed
// by the new routes overtakes an older record. Each topic's missing-since
// time is kept for when it is parked again.
func (p *pass) reroute() {
	var all []uint64
	for t, pt := range p.parked {
		all = append(all, pt.seqs...)
		if t != rerouteKey && !pt.draining {
			p.parkedSince[t] = pt.since
		}
		delete(p.parked, t)
	}
	if len(all) > 0 {
		slices.Sort(all)
		p.parked[rerouteKey] = &parkedTopic{seqs: all, draining: true}
	}
}

// feed reads the draining topics' records back into the window, oldest
// first, as far as it has room; a topic whose list is empty is no longer
// parked.
func (p *pass) feed(ctx context.Context) {
	for t, pt := range p.parked {
		if !pt.draining {
			continue
		}
		var in []*slot
		from := uint64(0)
		if len(pt.seqs) > 0 {
			from = pt.seqs[0] - 1
		}
		for len(pt.seqs) > 0 {
			records, bytes := p.w.room()
			records -= len(in)
			for _, s := range in {
				bytes -= s.size
			}
			if records <= 0 || bytes <= 0 && len(p.w.slots)+len(in) > 0 {
				break
			}
			var err error
			p.recs, err = p.f.src.Read(noWait, from, min(records, maxRead), max(bytes, 1), p.recs)
			if err != nil && !errors.Is(err, context.Canceled) {
				break // the buffer is closing: Run's read says so
			}
			if len(p.recs) == 0 {
				pt.seqs = nil // nothing left to read: dropped by a limit meanwhile
				break
			}
			for i := range p.recs {
				rec := &p.recs[i]
				from = rec.Seq
				for len(pt.seqs) > 0 && pt.seqs[0] < rec.Seq {
					pt.seqs = pt.seqs[1:] // gone from the buffer (a limit dropped it)
				}
				if len(pt.seqs) == 0 || pt.seqs[0] != rec.Seq {
					continue // another record
				}
				pt.seqs = pt.seqs[1:]
				s := p.slotFor(rec)
				if s == nil {
					continue
				}
				if to := p.parked[s.rec.Topic]; t == rerouteKey && to != nil && to != pt {
					to.seqs = append(to.seqs, s.seq) // rerouted to a topic that waits: wait with it
					s.state, s.kr, s.rec = settled, nil, kgo.Record{}
					continue
				}
				in = append(in, s)
			}
			clear(p.recs)
		}
		p.w.merge(in)
		if len(pt.seqs) == 0 {
			delete(p.parked, t)
		}
	}
}

// slotFor routes a record read back for a draining topic into a new slot,
// with its own copy of the payload (the rest of the Read is not kept). A
// record the routes no longer match is counted as unrouted, one with an
// invalid topic or too large for Kafka dead-lettered, as admit does (nil).
func (p *pass) slotFor(rec *buffer.Record) *slot {
	if len(p.slab) == 0 {
		p.slab = make([]slot, slabSize)
	}
	s := &p.slab[0]
	res, vals := p.f.route(p.routes, rec, time.Now(), &s.rec, s.hdrs[:0], s.buf[:0], p.vals)
	p.vals = vals
	switch res {
	case unrouted: // the routes changed (a reload) and match it no more
		s.rec = kgo.Record{}
		p.countUnrouted(rec)
		return nil
	case dropped: // the routes changed and drop it now
		s.rec = kgo.Record{}
		p.f.droppedByRoute.Add(1)
		return nil
	}
	if err := validTopic(s.rec.Topic); err != nil {
		s.rec = kgo.Record{}
		p.deadLetterSeq(rec.Seq, ReasonInvalidTopic, fmt.Errorf("MQTT topic %q: %w", rec.Topic, err))
		return nil
	}
	if n := recordSize(&s.rec); n > p.f.cfg.MaxRecordBytes {
		s.rec = kgo.Record{}
		p.deadLetterSeq(rec.Seq, ReasonTooLarge, fmt.Errorf("record of %d bytes exceeds the %d-byte limit", n, p.f.cfg.MaxRecordBytes))
		return nil
	}
	s.rec.Value = bytes.Clone(s.rec.Value)
	p.slab = p.slab[1:]
	s.seq, s.kr, s.size, s.state = rec.Seq, &s.rec, recordSize(&s.rec), pending
	return s
}

// draining reports whether records of a draining topic wait to be fed.
func (p *pass) draining() bool {
	for _, pt := range p.parked {
		if pt.draining && len(pt.seqs) > 0 {
			return true
		}
	}
	return false
}

// parkedFloor is the oldest record of a parked topic (the window must not
// release by prefix past it), or the largest sequence number.
func (p *pass) parkedFloor() uint64 {
	floor := ^uint64(0)
	for _, pt := range p.parked {
		if len(pt.seqs) > 0 {
			floor = min(floor, pt.seqs[0])
		}
	}
	return floor
}

// untilRetry is how long until the next parked topic's retry, at most a
// second.
func (p *pass) untilRetry() time.Duration {
	if next, ok := p.nextRetry(); ok {
		return min(max(time.Until(next), time.Millisecond), time.Second)
	}
	return time.Second
}

// nextRetry is when the earliest parked topic is looked up again or
// expires.
func (p *pass) nextRetry() (time.Time, bool) {
	var next time.Time
	for _, pt := range p.parked {
		if pt.draining {
			continue
		}
		due := pt.retryAt
		if d := p.f.cfg.UnknownTopicTimeout; d > 0 && pt.since.Add(d).Before(due) {
			due = pt.since.Add(d)
		}
		if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	return next, !next.IsZero()
}
