package forward

import (
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The window's size. A chunk goes out and is waited for before the next
// one (see produce), so a chunk of n records takes about rtt + n*c: the
// produce round trip (the network and the broker's acks=all), plus what
// each record costs on the way (routing, compression, the broker's own
// work per byte). A chunk keeps the link busy when n*c is a few times
// rtt: over a 50 ms link that is thousands of records, on a LAN a few
// hundred. The window holds two chunks (the one in flight and the next),
// and every record it holds is memory: so it is sized to what the link
// needs, between a floor and the configured MaxBufferedRecords and
// MaxBufferedBytes, and kept at the floor while Kafka is unreachable,
// when a full window would only wait.

const (
	// floorRecords and floorBytes are the least window, when the
	// configured bounds are larger.
	floorRecords = 1000
	floorBytes   = 1 << 20
	// busyRounds is how many round trips a chunk's own records should
	// take, at least: the round trip is then at most a quarter of a
	// chunk's time.
	busyRounds = 3
	// rttWindow is how long a minimum round trip counts: the link's
	// latency can grow (a route change), and the minimum of the last
	// period is taken, as BBR takes its min_rtt.
	rttWindow = 10 * time.Second
)

// sizer sizes the window from the chunks' times and the produce round
// trips. Run's goroutine uses it, except for observe, which franz-go's
// hook calls.
type sizer struct {
	maxRecords, maxBytes     int // the configured bounds
	floorRecords, floorBytes int

	// rtt is the smallest produce round trip (the wait for the broker's
	// answer, not the time to write the request) of the current period,
	// in ns; 0: none yet.
	rtt, prevRTT atomic.Int64
	periodStart  time.Time

	perRecord float64 // EWMA of a chunk's time per record beyond the round trip, ns
	recSize   float64 // EWMA of a record's size, bytes
}

func newSizer(maxRecords, maxBytes int) *sizer {
	return &sizer{
		maxRecords: maxRecords, maxBytes: maxBytes,
		floorRecords: min(floorRecords, maxRecords), floorBytes: min(floorBytes, maxBytes),
	}
}

// observe takes a produce request's round trip: how long the answer took
// once the request was written.
func (z *sizer) observe(rtt time.Duration) {
	ns := max(int64(rtt), 1)
	for {
		cur := z.rtt.Load()
		if cur != 0 && cur <= ns || z.rtt.CompareAndSwap(cur, ns) {
			return
		}
	}
}

// minRTT is the smallest round trip of this period and the last.
func (z *sizer) minRTT(now time.Time) time.Duration {
	if now.Sub(z.periodStart) > rttWindow {
		z.periodStart = now
		z.prevRTT.Store(z.rtt.Swap(0))
	}
	cur, prev := z.rtt.Load(), z.prevRTT.Load()
	switch {
	case cur == 0:
		return time.Duration(prev)
	case prev == 0:
		return time.Duration(cur)
	}
	return time.Duration(min(cur, prev))
}

// chunkDone takes a chunk of n records and size bytes that Kafka answered
// in d, and returns the window's bounds for what follows.
func (z *sizer) chunkDone(n, size int, d time.Duration, now time.Time) (records, bytes int) {
	rtt := z.minRTT(now)
	if n > 0 {
		per := float64(max(d-rtt, 0)) / float64(n)
		rs := float64(size) / float64(n)
		if z.perRecord == 0 {
			z.perRecord, z.recSize = per, rs
		} else {
			z.perRecord += (per - z.perRecord) / 8
			z.recSize += (rs - z.recSize) / 8
		}
	}
	return z.bounds(rtt)
}

// bounds is the window for a round trip of rtt: two chunks of
// busyRounds round trips' worth of records each.
func (z *sizer) bounds(rtt time.Duration) (records, bytes int) {
	if rtt <= 0 || z.perRecord <= 0 {
		return z.floorRecords, z.floorBytes
	}
	chunk := busyRounds * float64(rtt) / z.perRecord
	records = int(min(2*chunk, float64(z.maxRecords)))
	bytes = int(min(2*chunk*z.recSize*1.25, float64(z.maxBytes))) // room for records larger than the average
	return max(records, z.floorRecords), max(bytes, z.floorBytes)
}

// unreachable is the window while Kafka does not answer: the floor.
func (z *sizer) unreachable() (records, bytes int) {
	return z.floorRecords, z.floorBytes
}

// rttHook feeds the produce requests' round trips to a sizer
// (kgo.HookBrokerE2E).
type rttHook struct{ z *sizer }

func (h rttHook) OnBrokerE2E(_ kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) {
	const produceKey = 0
	if key == produceKey && e2e.WriteErr == nil && e2e.ReadErr == nil {
		h.z.observe(e2e.ReadWait + e2e.TimeToRead)
	}
}
