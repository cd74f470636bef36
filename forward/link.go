package forward

import (
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// While Kafka answers, the window is sized to the link. A chunk (half the
// window) costs a produce round trip, so the window holds what linkRate
// records a second need over the produce round trip (the shortest of the
// last 10 to 30 seconds, of the slowest broker; see roundTrips), between
// linkFloorRecords and linkFloorBytes and the configured bounds: the
// configured window from a round trip of 25 ms (MaxBufferedRecords
// 20,000), the floor on loopback and on most LANs, where round trips cost
// little and a large window only holds memory. Measured on loopback, a
// 1-million-record backlog drained at 140,000-194,000 msg/s with the
// window sized so and peaked at 30.6-31.4 MB RSS, against
// 172,000-217,000 msg/s and 63.9-65.4 MB with 20,000 records (go run
// ./cmd/ferry-bench -rate 0 -backlog 1000000); over a 50 ms round trip a
// 2,000-record window drained at 0.12 of a plain franz-go producer,
// 20,000 records at 0.68 (go test -bench Drain ./forward). See
// docs/PERFORMANCE.md, "The window and the link".
const (
	linkRate         = 400_000 // records a second
	linkFloorRecords = 2000
	linkFloorBytes   = 2 << 20
)

// linkWindow is the window's bounds over a link whose produce round trip
// is rtt (0: not measured yet).
func linkWindow(cfg Config, rtt time.Duration) (records, bytes int) {
	records = int(min(float64(cfg.MaxBufferedRecords), 2*linkRate*rtt.Seconds()))
	records = max(records, min(linkFloorRecords, cfg.MaxBufferedRecords))
	bytes = int(int64(cfg.MaxBufferedBytes) * int64(records) / int64(cfg.MaxBufferedRecords))
	bytes = max(bytes, min(linkFloorBytes, cfg.MaxBufferedBytes))
	return records, bytes
}

// rttPeriod is roundTrips' period: a round trip counts for between one
// and three periods (a period ends at the first measurement after it,
// up to two periods on, and is kept one more).
const rttPeriod = 10 * time.Second

// roundTrips keeps, for each broker, the shortest produce round trip (from
// writing the request to reading its answer) of the current and the
// previous period. The shortest, because a round trip also holds the
// broker's work and the wait behind other requests on the connection,
// which a larger window does not shorten; for each broker, because a
// chunk waits for the slowest of the partition leaders it went to.
type roundTrips struct {
	mu      sync.Mutex
	brokers map[int32]*brokerTrips
}

type brokerTrips struct {
	cur, prev time.Duration // prev 0: none in that period
	start     int64         // monoNow at the current period's start
}

func (r *roundTrips) observe(broker int32, d time.Duration) {
	if d <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := monoNow()
	b := r.brokers[broker]
	switch {
	case b == nil:
		if r.brokers == nil {
			r.brokers = map[int32]*brokerTrips{}
		}
		b = &brokerTrips{cur: d, start: now}
		r.brokers[broker] = b
	case time.Duration(now-b.start) > 2*rttPeriod: // nothing in the last period: start afresh
		*b = brokerTrips{cur: d, start: now}
	case time.Duration(now-b.start) > rttPeriod:
		*b = brokerTrips{cur: d, prev: b.cur, start: now}
	default:
		b.cur = min(b.cur, d)
	}
}

// longest is the longest of the brokers' shortest round trips of the last
// 10 to 30 seconds (a period of up to 20 s kept 10 s more); 0 if none
// was measured then.
func (r *roundTrips) longest() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := monoNow()
	var rtt time.Duration
	for id, b := range r.brokers {
		d := b.cur
		switch age := time.Duration(now - b.start); {
		case age > 2*rttPeriod: // no longer a leader for what ferry sends, or idle
			delete(r.brokers, id)
			continue
		case age <= rttPeriod && b.prev > 0:
			d = min(d, b.prev)
		}
		rtt = max(rtt, d)
	}
	return rtt
}

var _ kgo.HookBrokerE2E = hooks{}

// OnBrokerE2E measures the data path's produce round trips for the
// window.
func (h hooks) OnBrokerE2E(meta kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) {
	if key == int16(kmsg.Produce) && e2e.Err() == nil {
		h.f.rtt.observe(meta.NodeID, e2e.DurationE2E())
	}
}
