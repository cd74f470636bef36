package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

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

	// probe, when cands is not empty, is a bisection in progress: Kafka
	// refused a batch for good, and the record to blame is one of cands
	// (ascending sequence numbers, one partition). Each chunk goes only up
	// to the middle candidate.
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
	parked map[string]*parkedTopic

	attempt int       // consecutive chunks that failed with a retriable error
	waitTil time.Time // no chunk before this (backoff)
}

func newPass(f *Forwarder, cl *kgo.Client) *pass {
	return &pass{
		f: f, cl: cl,
		w:      newWindow(f.cfg.MaxBufferedRecords, f.cfg.MaxBufferedBytes),
		parked: map[string]*parkedTopic{},
		known:  map[string]bool{},

		refusals: map[string]int{},
	}
}

// topicRefusalRun is how many records of a topic in a row Kafka must
// refuse for a topic-level reason before the forwarder takes the refusal
// as the topic's, not the records' (an ACL that allows describing a topic
// but not writing to it), and dead-letters all its waiting records at once
// instead of finding them one by one.
const topicRefusalRun = 8

// maxRead is the most records one Read returns.
const maxRead = 1000

// slabSize is how many slots are allocated at once.
const slabSize = 256

// run is Run's loop: fill the window, produce a chunk, wait for every
// outcome, act on the failures, release, again.
func (p *pass) run(ctx context.Context) error {
	wait := backoff(250*time.Millisecond, 30*time.Second)
	for {
		// With records ready to go (and no Linger to wait out), the next
		// chunk goes out at once and the window is topped up while it is
		// in flight (see produce); otherwise wait here for records.
		if p.f.cfg.Linger > 0 || !p.hasWork(time.Now()) {
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
		p.pick(time.Now())
		if p.checkTopics(ctx) {
			p.pick(time.Now())
		}
		if len(p.chunk) == 0 {
			// Everything waiting is held back (a parked topic): fill
			// waits for records or the next retry, unless the window is
			// full or records wait, then this does.
			if (p.w.full() || p.hasWork(time.Now())) && !sleep(ctx, p.untilRetry()) {
				return nil
			}
			continue
		}
		if ctx.Err() != nil {
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
			p.attempt = 0
		}
	}
}

// fill reads records into the window while it has room. It waits for
// records only when the window has nothing to produce; then it also
// wakes up for the next parked topic's retry. With prefetch it only takes
// what the buffer holds now, and never waits.
func (p *pass) fill(ctx context.Context, prefetch bool) error {
	work := prefetch || p.hasWork(time.Now())
	for {
		records, room := p.w.room()
		if records == 0 || room == 0 {
			return nil
		}
		readCtx := ctx
		if work {
			// Only what is there now; never wait while records wait to go.
			if p.f.src.Stats().LastSeq <= p.after {
				if prefetch {
					return nil
				}
				return p.linger(ctx)
			}
		}
		cancel := func() {}
		switch next, ok := p.nextRetry(); {
		case work:
			readCtx = noWait // what is there; records that turn out unreadable must not make it wait
		case ok:
			readCtx, cancel = context.WithDeadline(ctx, next)
		}
		var err error
		p.recs, err = p.f.src.Read(readCtx, p.after, min(records, maxRead), room, p.recs)
		cancel()
		if err != nil {
			if readCtx != ctx && readCtx.Err() != nil && ctx.Err() == nil {
				return nil // nothing now, or a parked topic's retry is due
			}
			return fmt.Errorf("forward: %w: %w", errSource, err)
		}
		kept, setAside := p.kept[:0], false
		for i := range p.recs {
			switch s := p.admit(&p.recs[i]); {
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

// linger waits up to Linger for more records when the window is not full.
func (p *pass) linger(ctx context.Context) error {
	if p.f.cfg.Linger <= 0 || p.w.full() {
		return nil
	}
	lctx, cancel := context.WithTimeout(ctx, p.f.cfg.Linger)
	defer cancel()
	for !p.w.full() {
		records, bytes := p.w.room()
		var err error
		p.recs, err = p.f.src.Read(lctx, p.after, min(records, maxRead), bytes, p.recs)
		for i := range p.recs {
			p.admit(&p.recs[i])
		}
		clear(p.recs)
		if err != nil {
			if lctx.Err() != nil && ctx.Err() == nil {
				return nil
			}
			return fmt.Errorf("forward: %w: %w", errSource, err)
		}
	}
	return nil
}

// admit routes rec into the window and returns its slot. A record that
// matches no route, is too large or would go to an invalid topic is
// settled at once; one for a parked topic joins that topic's list instead
// (nil).
func (p *pass) admit(rec *buffer.Record) *slot {
	f := p.f
	p.after = rec.Seq
	if len(p.slab) == 0 {
		p.slab = make([]slot, slabSize) // one allocation for many records
	}
	s := &p.slab[0] // taken only if the record enters the window
	routed, vals := f.route(rec, &s.rec, s.hdrs[:0], s.buf[:0], p.vals)
	p.vals = vals
	if routed {
		if pt := p.parked[s.rec.Topic]; pt != nil && validTopic(s.rec.Topic) == nil {
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
	case kr == nil:
		s.state = settled
		n := f.unrouted.Add(1)
		if n&(n-1) == 0 { // 1, 2, 4, 8, ...: rate-limited
			f.log.Warn("record matches no route; dropped", "mqtt_topic", rec.Topic, "seq", rec.Seq, "dropped_total", n)
		}
	case s.size > f.cfg.MaxRecordBytes:
		p.deadLetter(s, ReasonTooLarge, fmt.Errorf("record of %d bytes exceeds the %d-byte limit", s.size, f.cfg.MaxRecordBytes))
	default:
		if err := validTopic(kr.Topic); err != nil {
			p.deadLetter(s, ReasonInvalidTopic, fmt.Errorf("MQTT topic %q: %w", rec.Topic, err))
		}
	}
	return s
}

// hasWork reports whether the window holds a record to produce.
func (p *pass) hasWork(time.Time) bool {
	for _, s := range p.w.slots {
		if s.state == pending {
			return true
		}
	}
	return false
}

// pick chooses the chunk: the pending records in window order, except
// those of parked topics and, during a bisection, those after the middle
// candidate; at most half the window, so that the next chunk is read
// while this one is in flight.
func (p *pass) pick(now time.Time) {
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
		f.lastAck.Store(time.Now().UnixNano()) // the wait starts now
	}
	for _, s := range p.chunk {
		s.state, s.done, s.err = sent, false, nil
		s.kr.Partition = -1 // set by the client once the record has a partition
		p.cl.Produce(context.Background(), s.kr, func(r *kgo.Record, err error) {
			f.inflight.Add(-1)
			if err == nil {
				f.delivered.Add(1)
				f.lastAck.Store(time.Now().UnixNano())
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

// settle reads the chunk's outcomes and acts on the failures: dead-letter
// what Kafka refused for good (bisecting to find it), park topics that do
// not exist, and return the first error worth a backoff (nil if none).
func (p *pass) settle(now time.Time) (retriable error) {
	var first *slot // the earliest record refused for good, to bisect on
	var firstReason buffer.Reason
	var failed []*slot
	for _, s := range p.chunk {
		done, part, err := p.w.outcome(s)
		if done && err == nil {
			s.state = acked
			if len(p.refusals) > 0 {
				delete(p.refusals, s.kr.Topic)
			}
			continue
		}
		if !done { // Flush returned without its answer: never count it as delivered
			err = errNoOutcome
			s.err = err
		}
		s.state, s.partition = pending, part
		failed = append(failed, s)
	}
	parked := map[string]bool{}
	for _, s := range failed { // first: parking takes the topic's records out of the window
		if class, _ := classify(s.err); class == missingTopic && s.state == pending && !parked[s.kr.Topic] {
			parked[s.kr.Topic] = true // once per chunk: the backoff counts retries, not records
			p.park(s.kr.Topic, fmt.Errorf("produce to Kafka topic %q: %w", s.kr.Topic, s.err), now)
		}
	}
	for _, s := range failed {
		if s.state != pending {
			continue // parked, or dead-lettered with its topic below
		}
		err := fmt.Errorf("produce to Kafka topic %q: %w", s.kr.Topic, s.err)
		class, reason := classify(s.err)
		switch {
		case class == missingTopic:
		case class == rejectTopic && s.partition < 0:
			// Refused with the topic's metadata: every record of the
			// topic failed alike, and there is no batch to bisect.
			topic := s.kr.Topic
			for _, o := range failed {
				if o.state == pending && o.partition < 0 && o.kr.Topic == topic {
					if c, r := classify(o.err); c == class && r == reason {
						p.deadLetter(o, reason, err)
					}
				}
			}
			delete(p.known, topic)
		case class == rejectRecord || class == rejectTopic:
			if first == nil {
				first, firstReason = s, reason
			}
		default:
			if retriable == nil {
				retriable = err
			}
		}
	}
	p.bisect(first, firstReason, failed)
	return retriable
}

// bisect narrows down the record to blame for a refused batch. first is
// the earliest record of the chunk that Kafka refused for good (nil if
// none). Its partition failed from first's batch on, so every failed
// record of that partition is a candidate; a candidate that fails alone is
// the one, and is dead-lettered. If the chunk was a probe and nothing was
// refused, the candidates it delivered are cleared, and the culprit is
// among the rest (those not produced, or failed for another reason).
func (p *pass) bisect(first *slot, reason buffer.Reason, failed []*slot) {
	if first == nil {
		before := len(p.probe.cands)
		p.probe.cands = p.stillPending(p.probe.cands)
		if p.probe.step > 0 && len(p.probe.cands) < before {
			p.probe.step *= 2 // the probe delivered: try twice as many
		}
		return
	}
	var cands []uint64
	for _, s := range failed {
		if s.state == pending && s.kr.Topic == first.kr.Topic && s.partition == first.partition {
			cands = append(cands, s.seq)
		}
	}
	if len(cands) == 1 {
		topic := first.kr.Topic
		p.deadLetter(first, reason, fmt.Errorf("refused by Kafka when produced alone: %w", first.err))
		p.probe.cands, p.probe.step = nil, 0
		if class, _ := classify(first.err); class == rejectTopic {
			if p.refusals[topic]++; p.refusals[topic] >= topicRefusalRun {
				p.deadLetterTopic(p.w.slots, topic, reason, fmt.Errorf(
					"the last %d records of the topic were refused one by one, so the topic is: %w", topicRefusalRun, first.err))
			}
		}
		return
	}
	if len(p.probe.cands) > 0 && p.probe.step > 0 {
		p.probe.step = 0 // the culprit is within the last gallop: halve from here
	} else {
		p.probe.step = 1
	}
	p.probe.cands = cands
	p.f.log.Info("Kafka refused a batch for good; producing it in parts to find the record to blame",
		"topic", first.kr.Topic, "partition", first.partition, "candidates", len(cands), "err", first.err)
}

// stillPending returns the sequence numbers of seqs (ascending) whose
// records wait in the window to be produced, in place (a parked topic's
// records leave the window).
func (p *pass) stillPending(seqs []uint64) []uint64 {
	out := seqs[:0]
	i := 0
	for _, s := range p.w.slots {
		for i < len(seqs) && seqs[i] < s.seq {
			i++ // released meanwhile
		}
		if i == len(seqs) {
			break
		}
		if seqs[i] == s.seq {
			if s.state == pending {
				out = append(out, s.seq)
			}
			i++
		}
	}
	return out
}

// metadataTimeout bounds checkTopics' wait for Kafka; past it the chunk
// goes out anyway and the client sorts the topics out.
const metadataTimeout = 5 * time.Second

// checkTopics asks Kafka about the topics of the chunk it has not seen
// yet, in one metadata request. A topic that does not exist is parked, one
// Kafka refuses has its records dead-lettered; either way they leave the
// chunk before it goes out. It reports whether it changed anything.
func (p *pass) checkTopics(ctx context.Context) bool {
	var topics []string
	seen := map[string]bool{}
	for _, s := range p.chunk {
		if t := s.kr.Topic; !p.known[t] && !seen[t] {
			seen[t] = true
			topics = append(topics, t)
		}
	}
	if len(topics) == 0 {
		return false
	}
	found, ok := p.lookup(ctx, topics)
	if !ok {
		return false // Kafka unreachable: produce, and let the client wait
	}
	now := time.Now()
	changed := false
	for t, kerrv := range found {
		if kerrv == nil {
			p.known[t] = true
			continue
		}
		err := fmt.Errorf("topic %q: %w", t, kerrv)
		switch class, reason := classify(kerrv); class {
		case missingTopic:
			p.park(t, err, now)
			changed = true
		case rejectTopic:
			p.deadLetterTopic(p.w.slots, t, reason, err)
			changed = true
		}
	}
	return changed
}

// lookup asks Kafka about topics in one metadata request and returns each
// topic's error (nil: it exists); ok is false if Kafka did not answer.
func (p *pass) lookup(ctx context.Context, topics []string) (found map[string]error, ok bool) {
	req := kmsg.NewPtrMetadataRequest()
	req.AllowAutoTopicCreation = p.f.cfg.AllowAutoTopicCreation
	for _, t := range topics {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(t)
		req.Topics = append(req.Topics, rt)
	}
	mctx, cancel := context.WithTimeout(ctx, metadataTimeout)
	defer cancel()
	resp, err := req.RequestWith(mctx, p.cl)
	if err != nil {
		return nil, false
	}
	found = map[string]error{}
	for _, rt := range resp.Topics {
		if rt.Topic != nil && slices.Contains(topics, *rt.Topic) {
			found[*rt.Topic] = kerr.ErrorForCode(rt.ErrorCode)
		}
	}
	return found, true
}

// deadLetterTopic dead-letters every pending record of topic in slots.
func (p *pass) deadLetterTopic(slots []*slot, topic string, reason buffer.Reason, err error) {
	for _, s := range slots {
		if s.state == pending && s.kr != nil && s.kr.Topic == topic {
			p.deadLetter(s, reason, err)
		}
	}
}

// deadLetter moves a record to the buffer's dead-letter bucket and settles
// its slot.
func (p *pass) deadLetter(s *slot, reason buffer.Reason, err error) {
	p.deadLetterSeq(s.seq, reason, err)
	s.state = settled
	s.kr, s.rec = nil, kgo.Record{} // let the payload go
}

// deadLetterSeq moves record seq to the buffer's dead-letter bucket,
// counted and logged.
func (p *pass) deadLetterSeq(seq uint64, reason buffer.Reason, err error) {
	f := p.f
	f.src.DeadLetter(seq, reason, err)
	f.deadMu.Lock()
	f.dead[reason]++
	n := f.dead[reason]
	f.deadMu.Unlock()
	if n&(n-1) == 0 { // 1, 2, 4, 8, ... per reason: rate-limited
		f.log.Error("record dead-lettered: Kafka will not take it; kept in the buffer (ferry buffer dlq list)",
			"seq", seq, "reason", reason, "err", err, "dead_lettered_total", n)
	}
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
