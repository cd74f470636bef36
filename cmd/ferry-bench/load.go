package main

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// loadConfig says what the simulated devices publish.
type loadConfig struct {
	BrokerAddr  string        // host:port
	Devices     int           // one MQTT v5 client each
	QoS         byte          // 0, 1 or 2
	Payload     int           // bytes per message
	Rate        float64       // messages per second over all devices; 0: flat out
	Duration    time.Duration // how long to publish; 0: until Messages
	Messages    int64         // stop after this many messages; 0: until Duration
	Tick        time.Duration // pacing granularity with Rate
	TopicFormat string        // fmt format with one %s for the device name
	ClientTag   string        // makes client ids unique per phase
}

// load is a set of simulated devices publishing numbered, timestamped
// messages. Each device has one message in flight at a time (it waits for
// the PUBACK, or PUBCOMP, before the next), so a device's messages reach
// the broker in order and the acknowledged ones are always a prefix of its
// sequence. With a rate, one scheduler goroutine hands out send permits
// every Tick, round robin over the devices, so the aggregate is smooth and
// pacing costs one wake-up per tick; a device that falls behind sends its
// permits back to back. Flat out, every device publishes as fast as its
// acknowledgements come back.
type load struct {
	cfg     loadConfig
	ctx     context.Context // cancelled: abandon publishes waiting for acknowledgements
	cancel  context.CancelFunc
	started bool
	devices []*device
	budget  atomic.Int64  // messages left to hand out
	stop    chan struct{} // closed at Duration: publish nothing more
	stopped sync.Once
	noMore  chan struct{} // closed when the scheduler has handed out Messages permits
	wg      sync.WaitGroup
	start   time.Time
	end     atomic.Int64 // unix nanos when the last device finished
	done    chan struct{}
}

// device is one simulated sensor: one MQTT client publishing to its topic.
type device struct {
	idx    int
	topic  string
	client *paho.Client
	conn   context.Context // ends with the client's connection
	hangUp context.CancelFunc
	// pending counts permits from the scheduler; wake (one slot) tells
	// the device there are some.
	pending atomic.Int64
	wake    chan struct{}

	sent        atomic.Int64 // distinct messages put on the wire
	acked       atomic.Int64 // acknowledged; seqs below this are
	republished atomic.Int64 // sent again after a failed publish
	errors      atomic.Int64 // failed publishes and reconnects
	lastErr     atomic.Pointer[error]
}

// newLoad connects every device (16 at a time) and returns when they are
// ready to publish; nothing is published before run. Cancelling ctx, or
// calling abandon, ends the devices' connections and abandons their
// publishes.
func newLoad(ctx context.Context, cfg loadConfig) (*load, error) {
	l := &load{cfg: cfg, stop: make(chan struct{}), noMore: make(chan struct{}), done: make(chan struct{})}
	l.ctx, l.cancel = context.WithCancel(ctx)
	l.devices = make([]*device, cfg.Devices)
	for i := range l.devices {
		l.devices[i] = &device{
			idx:   i,
			topic: fmt.Sprintf(cfg.TopicFormat, testenv.DeviceName(i)),
			wake:  make(chan struct{}, 1),
		}
	}
	sem := make(chan struct{}, 16)
	errs := make(chan error, len(l.devices))
	var wg sync.WaitGroup
	for _, d := range l.devices {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs <- l.connect(d)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			l.abandon()
			return nil, err
		}
	}
	return l, nil
}

// abandon stops the devices at once, even those waiting for an
// acknowledgement, and returns when they have disconnected.
func (l *load) abandon() {
	l.halt()
	l.cancel()
	if l.started {
		<-l.done
		return
	}
	for _, d := range l.devices {
		if d.client != nil {
			d.disconnect()
		}
	}
}

// connect (re)connects d with a clean session. d.conn ends with the
// connection, so a publish waiting for its acknowledgement gives up as soon
// as the connection drops.
func (l *load) connect(d *device) error {
	cctx, cancel := context.WithTimeout(l.ctx, 10*time.Second)
	defer cancel()
	conn, err := dialTCP(cctx, l.cfg.BrokerAddr)
	if err != nil {
		return fmt.Errorf("device %d: %w", d.idx, err)
	}
	connCtx, onLost := context.WithCancel(l.ctx)
	id := fmt.Sprintf("bench-%s-%s", l.cfg.ClientTag, testenv.DeviceName(d.idx))
	c := paho.NewClient(paho.ClientConfig{
		Conn:               conn,
		ClientID:           id,
		PacketTimeout:      5 * time.Minute, // a slow PUBACK is a figure, not an error
		OnClientError:      func(error) { onLost() },
		OnServerDisconnect: func(*paho.Disconnect) { onLost() },
	})
	if _, err := c.Connect(cctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 60}); err != nil {
		onLost()
		_ = conn.Close()
		return fmt.Errorf("device %d: MQTT connect to %s as %s: %w", d.idx, l.cfg.BrokerAddr, id, err)
	}
	d.client, d.conn, d.hangUp = c, connCtx, onLost
	return nil
}

// run starts publishing; done is closed when every device has stopped.
func (l *load) run() {
	l.started = true
	l.start = time.Now()
	if l.cfg.Messages > 0 {
		l.budget.Store(l.cfg.Messages)
	} else {
		l.budget.Store(1 << 62)
	}
	for _, d := range l.devices {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.runDevice(d)
		}()
	}
	if l.cfg.Rate > 0 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.schedule()
		}()
	}
	timer := time.AfterFunc(max(l.cfg.Duration, 0), l.halt)
	if l.cfg.Duration <= 0 {
		timer.Stop()
	}
	go func() {
		l.wg.Wait()
		l.end.Store(time.Now().UnixNano())
		timer.Stop()
		close(l.done)
	}()
}

// halt stops handing out messages; publishes in flight finish.
func (l *load) halt() { l.stopped.Do(func() { close(l.stop) }) }

// schedule hands out permits at cfg.Rate until halted or the budget is
// spent; then the devices use the permits they hold and stop.
func (l *load) schedule() {
	t := time.NewTicker(l.cfg.Tick)
	defer t.Stop()
	var issued int64
	next := 0
	for {
		select {
		case <-l.stop:
			return
		case now := <-t.C:
			due := int64(l.cfg.Rate*now.Sub(l.start).Seconds()) - issued
			for ; due > 0; due-- {
				if l.budget.Add(-1) < 0 {
					close(l.noMore)
					return
				}
				d := l.devices[next]
				next = (next + 1) % len(l.devices)
				d.pending.Add(1)
				select {
				case d.wake <- struct{}{}:
				default:
				}
				issued++
			}
		}
	}
}

// nextPermit waits until d may send its next message; false means stop.
func (l *load) nextPermit(d *device) bool {
	if l.cfg.Rate <= 0 {
		select {
		case <-l.stop:
			return false
		default:
		}
		if l.budget.Add(-1) < 0 {
			l.halt()
			return false
		}
		return true
	}
	for {
		select {
		case <-l.stop:
			return false
		default:
		}
		if d.pending.Load() > 0 {
			d.pending.Add(-1)
			return true
		}
		select {
		case <-d.wake:
		case <-l.stop:
			return false
		case <-l.noMore:
			if d.pending.Load() == 0 {
				return false
			}
		}
	}
}

// runDevice publishes d's messages until halted. A failed publish
// reconnects and sends the same message again (counted as republished),
// so the broker may see a message twice but never a gap.
func (l *load) runDevice(d *device) {
	defer d.disconnect()
	seq := int64(0)
	retry := false
	for {
		if !retry && !l.nextPermit(d) {
			return
		}
		if l.ctx.Err() != nil {
			return
		}
		// A new slice each time: paho holds it until acknowledged.
		payload := appendPayload(make([]byte, 0, l.cfg.Payload), stamp{device: d.idx, seq: seq, sentAt: time.Now().UnixNano()}, l.cfg.Payload)
		if retry {
			d.republished.Add(1)
		} else {
			d.sent.Add(1)
		}
		err := publish(d.conn, d.client, d.topic, l.cfg.QoS, payload)
		if err == nil {
			seq++
			d.acked.Store(seq)
			retry = false
			continue
		}
		retry = true
		d.errors.Add(1)
		d.lastErr.Store(&err)
		if l.ctx.Err() != nil {
			return
		}
		d.disconnect()
		if err := l.reconnect(d); err != nil {
			return
		}
	}
}

// reconnect tries to connect d again with a capped backoff until it works
// or ctx is done.
func (l *load) reconnect(d *device) error {
	wait := 50 * time.Millisecond
	for {
		t := time.NewTimer(wait)
		select {
		case <-l.ctx.Done():
			t.Stop()
			return l.ctx.Err()
		case <-t.C:
		}
		err := l.connect(d)
		if err == nil {
			return nil
		}
		d.errors.Add(1)
		d.lastErr.Store(&err)
		wait = min(2*wait, 2*time.Second)
	}
}

// publish sends one message and waits for its acknowledgement (QoS 1: a
// PUBACK, QoS 2: a PUBCOMP; QoS 0: the write).
func publish(ctx context.Context, c *paho.Client, topic string, qos byte, payload []byte) error {
	resp, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: payload})
	if err != nil {
		return fmt.Errorf("publish to %s: %w", topic, err)
	}
	if resp != nil && resp.ReasonCode >= 0x80 {
		return fmt.Errorf("publish to %s: reason code %#x", topic, resp.ReasonCode)
	}
	return nil
}

// disconnect ends d's connection.
func (d *device) disconnect() {
	_ = d.client.Disconnect(&paho.Disconnect{}) // closes the connection
	d.hangUp()
}

// loadCounts is a snapshot of the publishers' counters.
type loadCounts struct {
	Sent, Acked, Republished, Errors int64
	Unsent                           int64 // permits handed out but never used (publishers behind schedule)
	LastErr                          error
}

// counts sums the devices' counters.
func (l *load) counts() loadCounts {
	var c loadCounts
	for _, d := range l.devices {
		c.Sent += d.sent.Load()
		c.Acked += d.acked.Load()
		c.Republished += d.republished.Load()
		c.Errors += d.errors.Load()
		c.Unsent += max(d.pending.Load(), 0)
		if e := d.lastErr.Load(); e != nil {
			c.LastErr = *e
		}
	}
	return c
}

// acked returns, per device, how many of its messages were acknowledged.
func (l *load) acked() []int64 {
	a := make([]int64, len(l.devices))
	for i, d := range l.devices {
		a[i] = d.acked.Load()
	}
	return a
}

// elapsed returns how long the devices published: from start to the last
// one stopping, or until now while they run.
func (l *load) elapsed() time.Duration {
	if e := l.end.Load(); e != 0 {
		return time.Unix(0, e).Sub(l.start)
	}
	return time.Since(l.start)
}

// dialTCP connects to the broker at addr.
func dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	conn, err := new(net.Dialer).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial broker %s: %w", addr, err)
	}
	return conn, nil
}
