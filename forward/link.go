package forward

import (
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// While Kafka answers, the window is sized to the link. A chunk (half the
// window) costs a produce round trip, so the window holds what linkRate
// records a second need over the shortest round trip of the last 10 to 20
// seconds (see roundTrips), between linkFloorRecords and linkFloorBytes
// and the configured bounds: the configured window from a round trip of
// 25 ms (MaxBufferedRecords 20,000), the floor on loopback and on most
// LANs, where round trips cost little and a large window only holds
// memory. Measured on loopback, a 1-million-record backlog drained at
// 184,000 msg/s with a 2,000-record window and peaked at 30.7 MB RSS,
// against 216,000-241,000 msg/s and 64-65 MB with 20,000 records
// (go run ./cmd/ferry-bench -rate 0 -backlog 1000000); over a 50 ms round
// trip a 2,000-record window drained at 0.12 of a plain franz-go
// producer, 20,000 records at 0.68 (go test -bench Drain ./forward).
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

// rttPeriod is how long a round trip counts in roundTrips: between one
// and two periods.
const rttPeriod = 10 * time.Second

// roundTrips keeps the shortest produce round trip (from writing the
// request to reading its answer) of the current and the previous period.
// The shortest, because a round trip also holds the broker's work and
// the wait behind other requests on the connection, which a larger window
// does not shorten.
type roundTrips struct {
	mu        sync.Mutex
	cur, prev time.Duration // 0: none in that period
	start     int64         // monoNow at the current period's start
}

func (r *roundTrips) observe(d time.Duration) {
	if d <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := monoNow(); time.Duration(now-r.start) > rttPeriod {
		r.prev, r.cur, r.start = r.cur, 0, now
	}
	if r.cur == 0 || d < r.cur {
		r.cur = d
	}
}

// min is the shortest round trip of the current and previous period; 0
// if none was measured.
func (r *roundTrips) min() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.cur == 0:
		return r.prev
	case r.prev == 0:
		return r.cur
	}
	return min(r.cur, r.prev)
}

// produceKey is the Kafka protocol's request key of Produce.
const produceKey = 0

var _ kgo.HookBrokerE2E = hooks{}

// OnBrokerE2E measures the data path's produce round trips for the
// window.
func (h hooks) OnBrokerE2E(_ kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) {
	if key == produceKey && e2e.Err() == nil {
		h.f.rtt.observe(e2e.DurationE2E())
	}
}
