package forward

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The byte-rate cap (Config.MaxBytesPerSecond) is a token bucket charged
// with what the Kafka clients write to their connections: requests as
// they go on the wire, after compression, retries and metadata included.
// It is a debt bucket: a chunk goes when the balance is not negative, and
// what it wrote is taken off afterwards, whatever its size; the next chunk
// waits until the debt is paid. Chunks are cut to about capChunk of
// budget, so a record larger than that goes alone and is never held for
// good, and the bucket holds at most capBurst of budget saved while idle.
// Over a window of T, at most capBurst + capChunk + T of budget goes out:
// within 10% over 10 s, 7.5% here.
const (
	capChunk = 500 * time.Millisecond
	capBurst = 250 * time.Millisecond
	// capHold is how long the cap still counts as limiting the drain
	// after it last held a chunk back: a capped drain waits before
	// every chunk, a drain the link or Kafka limits now and then.
	capHold = 5 * time.Second
)

// rateCap is the bucket. The clients' hooks charge it from their
// goroutines; Run's goroutine waits on it.
type rateCap struct {
	rate float64 // bytes per second

	mu      sync.Mutex
	balance float64   // bytes that may go now; negative: a debt
	at      time.Time // when balance was last brought up to date

	written atomic.Int64 // bytes charged since the start

	// limiting is set while the cap is what holds the drain back (see
	// hold and check); since is when it last let a chunk go after holding
	// it back, from when it started to limit (monoNow times).
	spell       sync.Mutex // hold and check, so that a spell ends only after its last hold
	limiting    atomic.Bool
	since, from atomic.Int64
}

func newRateCap(bytesPerSecond int, now time.Time) *rateCap {
	c := &rateCap{rate: float64(bytesPerSecond), at: now}
	c.balance = c.burst()
	return c
}

func (c *rateCap) burst() float64 { return c.rate * capBurst.Seconds() }

// chunkBytes is how many bytes of records a chunk may hold, given that
// they take ratio times their size on the wire.
func (c *rateCap) chunkBytes(ratio float64) int {
	return max(int(c.rate*capChunk.Seconds()/ratio), 1)
}

// refill brings the balance up to now; c.mu is held.
func (c *rateCap) refill(now time.Time) {
	if d := now.Sub(c.at); d > 0 {
		c.balance = min(c.balance+d.Seconds()*c.rate, c.burst())
		c.at = now
	}
}

// spend charges n bytes written at now.
func (c *rateCap) spend(n int, now time.Time) {
	c.written.Add(int64(n))
	c.mu.Lock()
	c.refill(now)
	c.balance -= float64(n)
	c.mu.Unlock()
}

// delay is how long from now until the debt is paid; 0 if there is none.
func (c *rateCap) delay(now time.Time) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refill(now)
	if c.balance >= 0 {
		return 0
	}
	return time.Duration(-c.balance / c.rate * float64(time.Second))
}

// OnBrokerWrite charges every write of the clients it is hooked into
// (kgo.HookBrokerWrite).
func (c *rateCap) OnBrokerWrite(_ kgo.BrokerMetadata, _ int16, n int, _, _ time.Duration, _ error) {
	c.spend(n, time.Now())
}

// hold notes that the cap holds a chunk back from now to until (monoNow
// times); true if it did not limit the drain before.
func (c *rateCap) hold(now, until int64) bool {
	c.spell.Lock()
	defer c.spell.Unlock()
	c.since.Store(until)
	if c.limiting.Load() {
		return false
	}
	c.limiting.Store(true)
	c.from.Store(now)
	return true
}

// check ends a spell of limiting once the cap has not held a chunk back
// for capHold; it returns how long the spell lasted, 0 if none ended.
func (c *rateCap) check(mono int64) time.Duration {
	c.spell.Lock()
	defer c.spell.Unlock()
	if !c.limiting.Load() || time.Duration(mono-c.since.Load()) < capHold {
		return 0
	}
	c.limiting.Store(false)
	return max(time.Duration(c.since.Load()-c.from.Load()), time.Nanosecond)
}

// capChunks is what pick and pace keep for the cap: how many bytes the
// records of a chunk took on the wire, relative to their size, and what
// the chunk measured now held and when it went.
type capChunks struct {
	ratio float64 // wire bytes per byte of records; 1 until measured
	sent  int     // bytes of records in the chunk measured; 0: none
	mark  int64   // rateCap.written when it went
}

// capBytes bounds the next chunk's bytes to about capChunk at the cap:
// it measures the last chunk and estimates the next from it.
func (p *pass) capBytes() int {
	c, m := p.f.rate, &p.capped
	if m.ratio == 0 {
		m.ratio = 1
	}
	if wire := c.written.Load() - m.mark; m.sent > 0 && wire > 0 {
		// Pessimistic: a chunk that compressed worse than the estimate
		// sets it at once, one that compressed better moves it a
		// quarter of the way, so that data turning incompressible
		// overshoots by one chunk at most. What the clients wrote
		// meanwhile beside the chunk counts too, to be safe.
		last := min(max(float64(wire)/float64(m.sent), 1.0/64), 4)
		if last >= m.ratio {
			m.ratio = last
		} else {
			m.ratio = (3*m.ratio + last) / 4
		}
	}
	m.sent = 0
	return c.chunkBytes(m.ratio)
}

// pace waits until the cap lets the chunk go, logging when it starts to
// limit forwarding; false if ctx ended first.
func (p *pass) pace(ctx context.Context) bool {
	c := p.f.rate
	if c == nil {
		return true
	}
	for {
		d := c.delay(time.Now())
		if d <= 0 {
			break
		}
		now := monoNow()
		if c.hold(now, now+int64(d)) {
			p.f.log.Info("the byte-rate cap limits forwarding; records wait in the buffer", "max_bytes_per_second", p.f.cfg.MaxBytesPerSecond)
		}
		if !sleep(ctx, d) {
			return false
		}
	}
	m := &p.capped
	m.sent, m.mark = 0, c.written.Load()
	for _, s := range p.chunk {
		m.sent += s.size
	}
	return true
}

// rateCapped reports whether the cap limits forwarding now.
func (f *Forwarder) rateCapped() bool {
	return f.rate != nil && f.rate.limiting.Load()
}

// checkRateCap logs when the cap stopped limiting forwarding; watch calls
// it.
func (f *Forwarder) checkRateCap() {
	if f.rate == nil {
		return
	}
	if d := f.rate.check(monoNow()); d > 0 {
		f.log.Info("the byte-rate cap no longer limits forwarding", "max_bytes_per_second", f.cfg.MaxBytesPerSecond, "limited_for", d.Round(time.Second))
	}
}
