package agent

import (
	"fmt"
	"sync"
	"time"
)

// Ready reports whether ferry does its job: the buffer is open and the
// broker granted the subscriptions. Kafka being unreachable does not make
// ferry unready: buffering through an outage is the job. why says what is
// missing.
func (a *Agent) Ready() (ok bool, why string) {
	if a.closed.Load() {
		return false, "stopping: the buffer is closed"
	}
	// One connection doing its job is enough: a gateway with two brokers
	// buffers the one it reaches while the other is down (its state is in
	// Stats and the status).
	why = "not connected to the MQTT broker"
	for _, in := range a.ingests {
		switch s := in.Stats(); {
		case s.Connected && s.Subscribed:
			return true, ""
		case s.Connected:
			why = "the MQTT broker has not granted the subscriptions"
		}
	}
	return false, why
}

// Healthy reports whether the pipeline makes progress: false when
// appends have waited and none became durable (no commit, no delivery from
// memory), or the
// forwarder has had records waiting, delivered nothing and reported no
// Kafka error, for longer than Options.StallLimit. Kafka being down is
// healthy (the records wait in the buffer), and so is a buffer full with
// when_full: block (appends wait for room) while Kafka is down. Each call is an observation:
// call it at least a few times per StallLimit.
func (a *Agent) Healthy() (ok bool, why string) {
	if a.closed.Load() {
		// Stopping: the stages are done; what is left (closing the
		// buffer, moving a damaged file aside and salvaging it) is
		// bounded work, not a stall.
		return true, ""
	}
	return a.health.observe(a.Snapshot(), time.Now())
}

// health remembers when each stage last made progress.
type health struct {
	limit time.Duration // how long a stage may stall
	block bool          // buffer.when_full is block

	mu                  sync.Mutex
	last                Snapshot
	seen                bool
	commitAt, forwardAt time.Time // when each stage last progressed or had nothing to do
}

func (h *health) observe(s Snapshot, now time.Time) (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.seen {
		h.seen, h.last, h.commitAt, h.forwardAt = true, s, now, now
		return true, ""
	}
	kafkaDown := s.KafkaError != ""
	var waiting uint64 // appends not yet durable
	if s.Received > s.Committed {
		waiting = s.Received - s.Committed
	}
	// Progress is records becoming durable: by a commit, or (sync:
	// delayed) by Kafka's acknowledgement before any commit.
	// A committer that retries a failing disk is not stuck: a restart
	// would not make room, only lose what waits in memory.
	retrying := s.CommitFailures != h.last.CommitFailures
	if waiting == 0 || s.Committed != h.last.Committed || s.BufferCommits != h.last.BufferCommits || retrying || (h.block && s.bufferFull && kafkaDown) {
		h.commitAt = now
	}
	// A forwarder the byte-rate cap holds back is paced, not stuck: a
	// large record's debt can hold the next chunk for longer than the
	// watchdog's limit.
	if s.BufferRecords == 0 || s.forwardedDone != h.last.forwardedDone || kafkaDown || s.RateLimited {
		h.forwardAt = now
	}
	h.last = s
	if d := now.Sub(h.commitAt); d > h.limit {
		return false, fmt.Sprintf("buffer committer stuck: %d appends waiting, no commit for %v", waiting, d.Truncate(time.Second))
	}
	if d := now.Sub(h.forwardAt); d > h.limit {
		return false, fmt.Sprintf("forwarder stuck: %d records buffered, none forwarded for %v, no Kafka error", s.BufferRecords, d.Truncate(time.Second))
	}
	return true, ""
}
