package agent

import (
	"strings"
	"testing"
	"time"
)

// TestHealthJudgement feeds sequences of snapshots, one a second, to the
// health judgement with a 3s stall limit.
func TestHealthJudgement(t *testing.T) {
	idle := Snapshot{}
	committing := func(i int) Snapshot { // appends waiting and commits moving
		return Snapshot{Received: uint64(100 * i), Committed: uint64(100*i - 50), BufferCommits: uint64(i)}
	}
	stuckCommit := Snapshot{Received: 500, Committed: 400, BufferCommits: 7}
	// sync: delayed with Kafka healthy: records become durable by Kafka's
	// acknowledgement, never by a commit; some are always in flight.
	deliveredFromMemory := func(i int) Snapshot {
		return Snapshot{Received: uint64(100 * i), Committed: uint64(100*i - 20), BufferCommits: 3, forwardedDone: uint64(100*i - 30), BufferRecords: 30}
	}
	forwarding := func(i int) Snapshot {
		return Snapshot{BufferRecords: 10, forwardedDone: uint64(i)}
	}
	stuckForward := Snapshot{BufferRecords: 10, forwardedDone: 3}
	kafkaDown := Snapshot{BufferRecords: 10, forwardedDone: 3, KafkaError: "dial tcp: connection refused"}
	rateLimited := Snapshot{BufferRecords: 10, forwardedDone: 3, RateLimited: true} // a large record's debt
	fullBlocked := Snapshot{Received: 500, Committed: 400, BufferCommits: 7, BufferRecords: 400, KafkaError: "dial tcp: connection refused", bufferFull: true}
	notFull := fullBlocked // block, Kafka down, but room in the buffer: a hung disk
	notFull.bufferFull = false

	for _, tc := range []struct {
		name  string
		block bool
		seq   func(i int) Snapshot
		stuck string // "" healthy throughout; else the reason seen by the end
	}{
		{"idle", false, func(int) Snapshot { return idle }, ""},
		{"commits moving", false, committing, ""},
		{"durable by Kafka's acks, no commit", false, deliveredFromMemory, ""},
		{"committer stuck", false, func(int) Snapshot { return stuckCommit }, "buffer committer stuck: 100 appends waiting"},
		{"forwarder moving", false, forwarding, ""},
		{"forwarder stuck", false, func(int) Snapshot { return stuckForward }, "forwarder stuck: 10 records buffered"},
		{"Kafka down is buffering, not stuck", false, func(int) Snapshot { return kafkaDown }, ""},
		{"paced by the byte-rate cap, not stuck", false, func(int) Snapshot { return rateLimited }, ""},
		{"block at max_bytes while Kafka is down", true, func(int) Snapshot { return fullBlocked }, ""},
		{"no block: the same is a stuck committer", false, func(int) Snapshot { return fullBlocked }, "buffer committer stuck"},
		{"block, Kafka down, room left: a stuck committer", true, func(int) Snapshot { return notFull }, "buffer committer stuck"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := health{limit: 3 * time.Second, block: tc.block}
			t0 := time.Unix(1000, 0)
			var why string
			for i := 1; i <= 6; i++ {
				var ok bool
				ok, why = h.observe(tc.seq(i), t0.Add(time.Duration(i)*time.Second))
				if i <= 4 && !ok {
					t.Fatalf("unhealthy after %ds, within the 3s limit: %s", i-1, why)
				}
				if tc.stuck == "" && !ok {
					t.Fatalf("unhealthy at %ds: %s", i, why)
				}
			}
			if !strings.Contains(why, tc.stuck) || (tc.stuck != "" && why == "") {
				t.Fatalf("after 5s: %q, want %q", why, tc.stuck)
			}
			// Progress heals at once.
			if tc.stuck != "" {
				s := tc.seq(6)
				s.BufferCommits++
				s.forwardedDone++
				if ok, why := h.observe(s, t0.Add(7*time.Second)); !ok {
					t.Fatalf("still unhealthy after progress: %s", why)
				}
			}
		})
	}
}
