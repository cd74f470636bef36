package testenv

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// DefaultPartitions is the number of partitions of pre-created and
// auto-created topics.
const DefaultPartitions = 4

// KafkaConfig configures StartKafkaWith. The zero value is what StartKafka
// uses.
type KafkaConfig struct {
	// Partitions per topic, for pre-created and auto-created topics.
	// Default DefaultPartitions.
	Partitions int
	// Brokers in the cluster. Default 1. SetReachable cuts all of them.
	Brokers int
	// RTT, if above zero, delays everything the cluster sends by that much
	// (without limiting how much is in flight): a link with that round-trip
	// time, for measuring how forwarding copes with a slow uplink.
	RTT time.Duration
}

// Kafka is a fake Kafka cluster (kfake) on 127.0.0.1 whose network can be
// cut with SetReachable. Records stay in memory for the cluster's lifetime.
type Kafka struct {
	Cluster *kfake.Cluster // nil for a real broker
	gate    *gate
	real    *realKafka // nil for kfake
}

// StartKafka starts a one-broker kfake cluster with the given topics
// pre-created with DefaultPartitions partitions each. Topics that clients
// ask for are auto-created with the same number of partitions.
func StartKafka(topics ...string) (*Kafka, error) {
	return StartKafkaWith(KafkaConfig{}, topics...)
}

// StartKafkaWith is StartKafka with a configuration.
func StartKafkaWith(cfg KafkaConfig, topics ...string) (*Kafka, error) {
	if cfg.Partitions <= 0 {
		cfg.Partitions = DefaultPartitions
	}
	if cfg.Brokers <= 0 {
		cfg.Brokers = 1
	}
	g := &gate{up: true, conns: make(map[*gatedConn]struct{}), rtt: cfg.RTT}
	opts := []kfake.Opt{
		kfake.NumBrokers(cfg.Brokers),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(cfg.Partitions),
		kfake.ListenFn(g.listen),
	}
	if len(topics) > 0 {
		opts = append(opts, kfake.SeedTopics(int32(cfg.Partitions), topics...))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		g.closeAll()
		return nil, fmt.Errorf("start kfake: %w", err)
	}
	return &Kafka{Cluster: c, gate: g}, nil
}

// Brokers returns the seed broker addresses ("127.0.0.1:port").
func (k *Kafka) Brokers() []string {
	if k.real != nil {
		return []string{k.real.addr}
	}
	return k.Cluster.ListenAddrs()
}

// Received is how many bytes the cluster has read from its clients'
// connections (what they sent up the wire, less TCP/IP framing); 0 for a
// real broker.
func (k *Kafka) Received() int64 {
	if k.real != nil {
		return 0
	}
	return k.gate.received.Load()
}

// SetReachable simulates an uplink outage and its end. With up false, every
// open client connection is reset (closed with SO_LINGER 0, so the client
// sees "connection reset by peer") and every new connection is reset right
// after it is accepted, until SetReachable(true). To a franz-go client this
// looks like a network that refuses it: requests fail with retriable
// network errors and the client keeps retrying with backoff. The cluster's
// data is kept.
//
// For a real broker, down freezes the broker process (SIGSTOP) and up
// thaws it (SIGCONT): to clients the uplink goes silent, connections hang
// and requests time out, as when a gateway's link drops without a reset.
func (k *Kafka) SetReachable(up bool) {
	if k.real != nil {
		k.real.setReachable(up)
		return
	}
	k.gate.set(up)
}

// Close shuts the cluster down and closes every client connection. A real
// broker is left running (thawed, if an outage froze it).
func (k *Kafka) Close() {
	if k.real != nil {
		k.real.setReachable(true)
		return
	}
	k.Cluster.Close()
	k.gate.closeAll()
}

// gate wraps kfake's listeners: it tracks accepted connections so an outage
// can reset them, and resets new ones while down.
type gate struct {
	mu    sync.Mutex
	up    bool
	conns map[*gatedConn]struct{}
	rtt   time.Duration

	received atomic.Int64 // bytes read from clients
}

func (g *gate) listen(network, address string) (net.Listener, error) {
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, err
	}
	return &gatedListener{Listener: ln, g: g}, nil
}

func (g *gate) set(up bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.up = up
	if !up {
		g.resetLocked()
	}
}

func (g *gate) closeAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.resetLocked()
}

func (g *gate) resetLocked() {
	for c := range g.conns {
		reset(c.Conn)
		delete(g.conns, c)
	}
}

// reset closes c so that the peer sees a reset rather than an orderly EOF.
func reset(c net.Conn) {
	if dc, ok := c.(*delayedConn); ok {
		dc.stop()
		c = dc.Conn
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

type gatedListener struct {
	net.Listener
	g *gate
}

// Accept returns the next connection while the gate is up, and resets
// connections that arrive while it is down.
func (l *gatedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.g.mu.Lock()
		if !l.g.up {
			l.g.mu.Unlock()
			reset(c)
			continue
		}
		if l.g.rtt > 0 {
			c = newDelayedConn(c, l.g.rtt)
		}
		gc := &gatedConn{Conn: c, g: l.g}
		l.g.conns[gc] = struct{}{}
		l.g.mu.Unlock()
		return gc, nil
	}
}

type gatedConn struct {
	net.Conn
	g *gate
}

// Read counts what the cluster reads from its clients.
func (c *gatedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.g.received.Add(int64(n))
	return n, err
}

// Close closes the connection and stops tracking it.
func (c *gatedConn) Close() error {
	c.g.mu.Lock()
	delete(c.g.conns, c)
	c.g.mu.Unlock()
	return c.Conn.Close()
}

// delayedConn delivers what is written to it after a delay, as a long link
// does: writes return at once and any amount may be on its way. One
// goroutine per connection, stopped by Close, does the delayed writes.
type delayedConn struct {
	net.Conn
	delay time.Duration
	queue chan delayedWrite
	done  chan struct{}
	once  sync.Once
}

type delayedWrite struct {
	due time.Time
	b   []byte
}

func newDelayedConn(c net.Conn, delay time.Duration) *delayedConn {
	d := &delayedConn{Conn: c, delay: delay, queue: make(chan delayedWrite, 4096), done: make(chan struct{})}
	go d.deliver()
	return d
}

func (d *delayedConn) Write(p []byte) (int, error) {
	w := delayedWrite{due: time.Now().Add(d.delay), b: append([]byte(nil), p...)}
	select {
	case d.queue <- w:
		return len(p), nil
	case <-d.done:
		return 0, net.ErrClosed
	}
}

func (d *delayedConn) deliver() {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case w := <-d.queue:
			if wait := time.Until(w.due); wait > 0 {
				t.Reset(wait)
				select {
				case <-t.C:
				case <-d.done:
					return
				}
			}
			if _, err := d.Conn.Write(w.b); err != nil {
				return
			}
		case <-d.done:
			return
		}
	}
}

func (d *delayedConn) stop() { d.once.Do(func() { close(d.done) }) }

func (d *delayedConn) Close() error {
	d.stop()
	return d.Conn.Close()
}
