package forward

import (
	"fmt"
	"time"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/twmb/franz-go/pkg/kgo"
)

// topicRefusalRun is how many records of a topic in a row Kafka must
// refuse for a topic-level reason before the forwarder takes the refusal
// as the topic's, not the records' (an ACL that allows describing a topic
// but not writing to it), and dead-letters all its waiting records at once
// instead of finding them one by one.
const topicRefusalRun = 8

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
