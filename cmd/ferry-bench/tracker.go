package main

import (
	"sync"
	"time"
)

// tracker accounts for the messages that came out at the far end (read
// back from Kafka, or received by a subscriber): which (device, seq) pairs
// arrived, how often, in which order, and how long after they were sent.
// It is safe for concurrent use.
type tracker struct {
	mu       sync.Mutex
	devices  []deviceSeen
	latency  histogram
	received int64 // every message seen, duplicates included
	unique   int64
	dups     int64
	outOrder int64
	unparsed int64
	split    int64 // devices seen on more than one partition
	lastAt   time.Time
	firstAt  time.Time
	// watchFrom and firstSince time the first arrival after a moment
	// (Kafka's return after an outage).
	watchFrom  time.Time
	firstSince time.Time
}

// deviceSeen is what a tracker knows of one device.
type deviceSeen struct {
	seen      []uint64 // bit per seq
	maxSeq    int64    // highest seq seen; -1 before the first
	contig    int64    // every seq below this was seen
	partition int32    // of the first record; -1 if not from Kafka
	split     bool
}

func newTracker(devices int) *tracker {
	t := &tracker{devices: make([]deviceSeen, devices)}
	for i := range t.devices {
		t.devices[i].maxSeq = -1
		t.devices[i].partition = -1
	}
	return t
}

// add accounts for one payload that arrived at now, from a Kafka
// partition (or -1). Order is judged in arrival order, which for Kafka is
// offset order within the partition.
func (t *tracker) add(payload []byte, partition int32, now time.Time) {
	s, err := parsePayload(payload)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.received++
	if err != nil || s.device < 0 || s.device >= len(t.devices) || s.seq < 0 {
		t.unparsed++
		return
	}
	if t.firstAt.IsZero() {
		t.firstAt = now
	}
	if !t.watchFrom.IsZero() && t.firstSince.IsZero() {
		t.firstSince = now
	}
	t.lastAt = now
	d := &t.devices[s.device]
	if partition >= 0 {
		if d.partition < 0 {
			d.partition = partition
		} else if d.partition != partition && !d.split {
			d.split = true
			t.split++
		}
	}
	w, bit := s.seq/64, uint64(1)<<(s.seq%64)
	for int64(len(d.seen)) <= w {
		d.seen = append(d.seen, 0)
	}
	if d.seen[w]&bit != 0 {
		t.dups++
		return
	}
	d.seen[w] |= bit
	t.unique++
	if s.seq < d.maxSeq {
		t.outOrder++
	}
	d.maxSeq = max(d.maxSeq, s.seq)
	for d.has(d.contig) {
		d.contig++
	}
	t.latency.record(now.Sub(time.Unix(0, s.sentAt)))
}

func (d *deviceSeen) has(seq int64) bool {
	w := seq / 64
	return w < int64(len(d.seen)) && d.seen[w]&(1<<(seq%64)) != 0
}

// watch starts timing the first arrival after now; firstArrival returns
// it (zero until there is one).
func (t *tracker) watch(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.watchFrom, t.firstSince = now, time.Time{}
}

func (t *tracker) firstArrival() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.firstSince
}

// uniqueCount returns how many distinct messages arrived.
func (t *tracker) uniqueCount() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.unique
}

// caughtUp reports whether every message in acked (per device: seqs below
// acked[i]) has arrived.
func (t *tracker) caughtUp(acked []int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, a := range acked {
		if t.devices[i].contig < a {
			return false
		}
	}
	return true
}

// delivery is a tracker's account against what the publishers had
// acknowledged.
type delivery struct {
	Received   int64 // duplicates included
	Unique     int64
	Duplicates int64
	OutOfOrder int64
	Unparsed   int64
	Split      int64
	Lost       int64 // acknowledged, never arrived
	Unacked    int64 // arrived without an acknowledgement (in flight when a connection dropped)
	LostSample []stamp
	FirstAt    time.Time
	LastAt     time.Time
	P50, P99   time.Duration
	Max        time.Duration
}

// summary compares what arrived with acked (per device, seqs below
// acked[i] were acknowledged).
func (t *tracker) summary(acked []int64) delivery {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := delivery{
		Received: t.received, Unique: t.unique, Duplicates: t.dups,
		OutOfOrder: t.outOrder, Unparsed: t.unparsed, Split: t.split,
		FirstAt: t.firstAt, LastAt: t.lastAt,
		P50: t.latency.quantile(0.50), P99: t.latency.quantile(0.99), Max: t.latency.max,
	}
	var ackedUnique int64
	for i := range t.devices {
		d := &t.devices[i]
		a := int64(0)
		if i < len(acked) {
			a = acked[i]
		}
		for seq := int64(0); seq < a; seq++ {
			if d.has(seq) {
				ackedUnique++
				continue
			}
			r.Lost++
			if len(r.LostSample) < 10 {
				r.LostSample = append(r.LostSample, stamp{device: i, seq: seq})
			}
		}
	}
	r.Unacked = t.unique - ackedUnique
	return r
}
