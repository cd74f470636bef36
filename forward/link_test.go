package forward

import (
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

func TestLinkWindow(t *testing.T) {
	def := Config{MaxBufferedRecords: 20000, MaxBufferedBytes: 16 << 20}
	for _, c := range []struct {
		cfg            Config
		rtt            time.Duration
		records, bytes int
	}{
		{def, 0, linkFloorRecords, linkFloorBytes},                      // not measured yet
		{def, 100 * time.Microsecond, linkFloorRecords, linkFloorBytes}, // loopback
		{def, 10 * time.Millisecond, 8000, 16 << 20 * 8000 / 20000},     // a LAN far away
		{def, 25 * time.Millisecond, 20000, 16 << 20},                   // the configured window from here on
		{def, 100 * time.Millisecond, 20000, 16 << 20},
		{Config{MaxBufferedRecords: 500, MaxBufferedBytes: 1 << 20}, 0, 500, 1 << 20}, // configured below the floor
		{Config{MaxBufferedRecords: 50000, MaxBufferedBytes: 64 << 20}, 100 * time.Millisecond, 50000, 64 << 20},
		{Config{MaxBufferedRecords: 50000, MaxBufferedBytes: 64 << 20}, 50 * time.Millisecond, 40000, 64 << 20 * 40000 / 50000},
	} {
		if r, b := linkWindow(c.cfg, c.rtt); r != c.records || b != c.bytes {
			t.Errorf("linkWindow(%d records, %d bytes; %v) = %d, %d; want %d, %d",
				c.cfg.MaxBufferedRecords, c.cfg.MaxBufferedBytes, c.rtt, r, b, c.records, c.bytes)
		}
	}
}

func TestRoundTripsKeepsEachBrokersShortestOfTwoPeriods(t *testing.T) {
	var r roundTrips
	if d := r.longest(); d != 0 {
		t.Fatalf("nothing measured: %v", d)
	}
	r.observe(1, 30*time.Millisecond)
	r.observe(1, 20*time.Millisecond)
	r.observe(1, 40*time.Millisecond)
	if d := r.longest(); d != 20*time.Millisecond {
		t.Fatalf("%v, want broker 1's shortest, 20ms", d)
	}
	r.observe(2, 5*time.Millisecond) // a broker nearby: a chunk still waits for broker 1
	if d := r.longest(); d != 20*time.Millisecond {
		t.Fatalf("%v with a nearer broker, want 20ms", d)
	}
	age := func(id int32, d time.Duration) { r.brokers[id].start -= int64(d) }
	age(1, rttPeriod+time.Second) // broker 1's period ends: 20ms is the previous one's
	r.observe(1, 50*time.Millisecond)
	if d := r.longest(); d != 20*time.Millisecond {
		t.Fatalf("%v after a period, want 20ms (the previous period's)", d)
	}
	age(1, rttPeriod+time.Second) // 20ms is forgotten: the link got slower
	r.observe(1, 60*time.Millisecond)
	if d := r.longest(); d != 50*time.Millisecond {
		t.Fatalf("%v after two periods, want 50ms", d)
	}
	age(1, rttPeriod+time.Second) // broker 1's current period ended, without a new one
	if d := r.longest(); d != 60*time.Millisecond {
		t.Fatalf("%v, want 60ms (the period just ended)", d)
	}
	age(1, rttPeriod) // and nothing since: broker 1 no longer counts
	if d := r.longest(); d != 5*time.Millisecond {
		t.Fatalf("%v, want broker 2's 5ms once broker 1's round trips are old", d)
	}
	age(2, 3*rttPeriod) // a link idle for long: a new measurement starts afresh
	r.observe(2, 70*time.Millisecond)
	if d := r.longest(); d != 70*time.Millisecond {
		t.Fatalf("%v, want 70ms: the 5ms from before the idle time is forgotten", d)
	}
}

// The window is sized to the link: on loopback it stays small, where a
// large one would only hold memory, and over a 50 ms round trip it grows
// to its configured bounds, which the drain needs there.
func TestWindowSizedToTheLink(t *testing.T) {
	const n = 20000
	peakOver := func(t *testing.T, rtt time.Duration) int64 {
		k, err := testenv.StartKafkaWith(testenv.KafkaConfig{RTT: rtt}, "t")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(k.Close)
		f, err := New(Config{Brokers: k.Brokers(), Routes: []Route{route(t, "s/+", "t", "")},
			ShutdownTimeout: 200 * time.Millisecond}, smallBacklog(t, n))
		if err != nil {
			t.Fatal(err)
		}
		return peakInFlight(t, f, func() {
			waitFor(t, "the records delivered", func() bool { return f.Stats().Delivered >= n })
		})
	}
	t.Run("loopback", func(t *testing.T) {
		// Round trips on loopback take well under the 25 ms from which
		// the window is the configured one: not a chunk of it in flight.
		if peak := peakOver(t, 0); peak >= 20000/2 {
			t.Fatalf("%d records in flight on loopback: the window went to its configured bounds", peak)
		}
	})
	t.Run("50ms", func(t *testing.T) {
		if peak := peakOver(t, 50*time.Millisecond); peak < 20000/2 {
			t.Fatalf("at most %d records in flight over a 50 ms round trip, want a chunk of the configured window (%d)", peak, 20000/2)
		}
	})
}
