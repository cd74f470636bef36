// Package mqtt subscribes to an MQTT v5 broker and turns every message into a
// buffer record.
//
// Guarantee: a QoS 1 or 2 message is acknowledged to the broker (PUBACK or
// PUBREC) only after the sink called done for its record with a nil error,
// that is once the record is durable, and only on the connection the
// message came on. Acknowledgements go out in the order the messages
// arrived, as MQTT requires, from a goroutine of ingest's own: done only
// queues, so a connection that takes nothing never holds up the sink. Many
// messages are in flight at once (up to Receive Maximum) and share one sink
// commit and one write of their acknowledgements, so ingest never waits for
// one fsync per message. The session is persistent (clean start false, a
// session expiry interval): while ferry is stopped or disconnected the
// broker keeps the messages, and after a crash it redelivers the ones that
// were not acknowledged. Duplicates are possible; loss of an acknowledged
// message is not, with two exceptions, both counted in Stats and logged:
// a message whose payload is over Config.MaxPayload, and one whose topic
// no configured subscription matches (it came through a filter the
// configuration no longer has), are acknowledged without being stored.
//
// The package knows the buffer's Record type, not what consumes it.
package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-edge/ferry/buffer"
)

// Sink is where records go: *buffer.Buffer. Append must not keep rec or
// anything it points to (ingest reuses it, and the payload and correlation
// data may lie in the connection's read buffer, overwritten once Append
// returns). Unless Append returns an error, it must call done exactly
// once, after the record is durable (err == nil) or could not be stored,
// in append order; done may be called from any goroutine, also before
// Append returns. done is cheap and never blocks.
//
// A Sink whose Append can wait for room should also have TryAppend, as
// *buffer.Buffer does: Append that returns false at once, rec not taken
// and done not called, where Append would wait. ingest takes a message on
// the connection's own reading goroutine only through TryAppend; one the
// sink has no room for goes through paho, whose reader goes on reading the
// connection's other packets (acknowledgements of ferry's subscriptions,
// a DISCONNECT, a broken connection) while Append waits.
type Sink interface {
	Append(rec *buffer.Record, done func(seq uint64, err error)) error
}

// tryAppender is a Sink with TryAppend (see Sink).
type tryAppender interface {
	TryAppend(rec *buffer.Record, done func(seq uint64, err error)) (bool, error)
}

// Config says how to reach the broker and what to subscribe to.
type Config struct {
	URL            *url.URL // tcp://, mqtt://, ssl://, tls://, mqtts://, ws://, wss://
	ClientID       string   // stable: it names the persistent session
	Username       string
	Password       []byte
	TLS            *tls.Config // nil: system defaults for TLS schemes
	KeepAlive      time.Duration
	SessionExpiry  time.Duration // how long the broker keeps the session while ferry is away
	ConnectTimeout time.Duration
	ReceiveMaximum uint16 // unacknowledged messages the broker may send at once
	// MaxPayload bounds a message's payload, in bytes (default 1 MiB):
	// CONNECT asks the broker for packets of at most this plus room for
	// the topic and properties, and a larger message that comes anyway is
	// acknowledged and dropped (Stats.DroppedTooLarge), never read whole.
	MaxPayload    int
	Subscriptions []Subscription
	// StateFile keeps, across restarts, the filters ferry's session was
	// subscribed to, so that a filter removed from the configuration is
	// unsubscribed (the broker keeps the session's subscriptions longer
	// than ferry keeps its configuration). "": not kept.
	StateFile string
	GatewayID string // not sent; for logs
	Logger    *slog.Logger
}

const (
	// stopWait bounds how long Run, when stopping, waits for records handed
	// to the sink to become durable so their acknowledgements can go out.
	stopWait = 10 * time.Second
	// disconnectWait bounds how long writing DISCONNECT may take when Run
	// stops, and how long Run waits for the ack goroutine once it gave up
	// on the sink.
	disconnectWait = 2 * time.Second
	// defaultMaxPayload is Config.MaxPayload's default.
	defaultMaxPayload = 1 << 20
	// maxPacketSize is the largest packet MQTT can frame.
	maxPacketSize = 268_435_455
	// packetHeadroom is what CONNECT's Maximum Packet Size allows beyond
	// MaxPayload: the fixed header, the topic (up to 65535 bytes, in
	// practice far less), packet identifier and properties.
	packetHeadroom = 64 << 10
)

// Stats are ingest counters since Run started.
type Stats struct {
	Received     uint64 // messages handed to the sink
	Stored       uint64 // records the sink reported durable
	Acknowledged uint64 // QoS 1 and 2 messages acknowledged to the broker (PUBACK or PUBREC written)
	Connected    bool   // a connection to the broker is up
	// Subscribed is true once the broker granted the subscriptions on the
	// current connection.
	Subscribed bool
	// SessionsLost counts connections on which the broker had no session
	// for ferry although it had one before (session present false on a
	// reconnect, or at startup after earlier subscriptions): what the
	// broker queued for ferry meanwhile is lost.
	SessionsLost uint64
	// DroppedUnsubscribed counts messages acknowledged and dropped because
	// no subscription of the configuration matches their topic: they came
	// through a subscription the configuration no longer has.
	DroppedUnsubscribed uint64
	// DroppedTooLarge counts messages acknowledged and dropped because
	// their payload is larger than Config.MaxPayload.
	DroppedTooLarge uint64
	// State is what the connection is doing; Since is when it came up or
	// went down (when New made it, if it never came up); LastError is the
	// last error since it was last up: why it is down.
	State     ConnState
	Since     time.Time
	LastError string
}

// Ingest is a running MQTT subscription feeding a sink.
type Ingest struct {
	cfg  Config
	sink Sink
	log  *slog.Logger
	sess *session
	ping *pinger // the keep-alive of Run's connections
	// settleFunc is in.settle, made once: Append gets it for every record.
	settleFunc func(uint64, error)
	// dial opens the network connection under MQTT (and TLS) for the
	// schemes ingest dials itself; tests replace it.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	stopWait time.Duration // stopWait; shorter in tests

	received, stored, acked atomic.Uint64
	connected               atomic.Bool
	subscribed              atomic.Bool
	conn                    connState // for Stats: State, Since, LastError
	sessionsLost            atomic.Uint64
	droppedUnsubscribed     atomic.Uint64
	droppedTooLarge         atomic.Uint64

	subs    *subscriptions // what the session is subscribed to
	backoff backoff        // reconnection delays
	// On autopaho's connection goroutine only (OnConnectionUp):
	connections int      // connections that came up
	warned      []string // the CONNACK warnings logged last

	unsubscribedLog logEvery // in receive
	tooLargeLog     logEvery // likewise

	fromPaho inbound // reused by onPublish (paho's router goroutine)

	// The acknowledgement queue. receive appends an entry for each
	// message it hands to the sink; done (settle) marks the oldest entry
	// not yet marked; the ack goroutine (sendAcks) takes the marked ones
	// and acknowledges them in order. It is bounded without a limit of its
	// own, so done never waits for room: the broker sends at most Receive
	// Maximum QoS 1 and 2 messages that ferry has not acknowledged, and
	// the QoS 0 messages among them are no more than the sink holds
	// unsettled (its Append blocks when its queue is full).
	mu       sync.Mutex
	stopping bool          // no new messages are taken
	queue    []pending     // oldest first
	settled  int           // queue[:settled] have their done
	woken    bool          // a wake is pending: done need not send another
	wake     chan struct{} // 1 slot: settled entries wait for the ack goroutine

	fatalOnce sync.Once
	fatal     chan error
}

// pending is a message handed to the sink, waiting for its done and then
// for its acknowledgement.
type pending struct {
	link  *link // the connection it came on; nil: none up (not acknowledged)
	topic string
	id    uint16 // packet identifier
	qos   byte
	ok    bool // durable: the sink's done came with a nil error
	// bypass: not handed to the sink (dropped, counted): acknowledged in
	// its turn without waiting for a done.
	bypass bool
}

// New checks cfg and returns an Ingest ready to Run.
func New(cfg Config, sink Sink) (*Ingest, error) {
	if cfg.URL == nil {
		return nil, errors.New("mqtt: no broker URL")
	}
	if cfg.ClientID == "" {
		return nil, errors.New("mqtt: no client id")
	}
	if len(cfg.Subscriptions) == 0 {
		return nil, errors.New("mqtt: no subscriptions")
	}
	if cfg.ReceiveMaximum == 0 {
		cfg.ReceiveMaximum = 1000
	}
	if cfg.MaxPayload <= 0 {
		cfg.MaxPayload = defaultMaxPayload
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.SessionExpiry <= 0 {
		cfg.SessionExpiry = 24 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	in := &Ingest{
		cfg:      cfg,
		sink:     sink,
		log:      cfg.Logger.With("component", "mqtt"),
		sess:     newSession(),
		dial:     dialProxied,
		stopWait: stopWait,
		wake:     make(chan struct{}, 1),
		fatal:    make(chan error, 1),
		subs:     newSubscriptions(cfg.Subscriptions),
	}
	in.settleFunc = in.settle
	in.conn.set(StateConnecting, "") // since now
	return in, nil
}

// Stats returns the ingest counters.
func (in *Ingest) Stats() Stats {
	state, since, lastErr := in.conn.load()
	return Stats{
		State:        state,
		Since:        since,
		LastError:    lastErr,
		Received:     in.received.Load(),
		Stored:       in.stored.Load(),
		Acknowledged: in.acked.Load(),
		Connected:    in.connected.Load(),
		Subscribed:   in.subscribed.Load(),

		SessionsLost:        in.sessionsLost.Load(),
		DroppedUnsubscribed: in.droppedUnsubscribed.Load(),
		DroppedTooLarge:     in.droppedTooLarge.Load(),
	}
}

// Run connects, subscribes and feeds the sink until ctx is done or the sink
// fails. On ctx done it stops taking messages, waits for the records already
// handed to the sink to become durable and their acknowledgements to go out,
// then disconnects; it returns nil. A sink failure is returned as an error:
// the messages concerned were not acknowledged, so the broker keeps them.
// Run is called once.
func (in *Ingest) Run(ctx context.Context) error {
	ping := &pinger{} // its PINGREQ writes are waited for below
	in.ping = ping
	connCtx, cancelConn := context.WithCancel(context.Background())
	defer cancelConn()

	in.loadState()
	hadSession := in.subs.known && len(in.subs.session) > 0

	ackStop, ackAbandon, ackExited := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go in.sendAcks(ackStop, ackAbandon, ackExited)
	// up wakes the subscriber goroutine for each connection; one slot: a
	// connection that came up while it was busy is handled once.
	up := make(chan struct{}, 1)

	var lastErr atomic.Value // string: log connect errors on change only
	cc := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{in.cfg.URL},
		TlsCfg:                        in.cfg.TLS,
		KeepAlive:                     uint16(in.cfg.KeepAlive / time.Second),
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         uint32(in.cfg.SessionExpiry / time.Second),
		ReconnectBackoff:              in.backoff.delay,
		ConnectTimeout:                in.cfg.ConnectTimeout,
		ConnectUsername:               in.cfg.Username,
		ConnectPassword:               in.cfg.Password,
		ConnectPacketBuilder: func(c *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if c.Properties == nil {
				c.Properties = &paho.ConnectProperties{}
			}
			rm := in.cfg.ReceiveMaximum
			c.Properties.ReceiveMaximum = &rm
			// The broker does not send ferry a larger packet (it drops
			// it for ferry, as delivered); one that comes anyway is
			// replaced by a stub as it is read (see bufConn.Read).
			mps := uint32(min(in.cfg.MaxPayload+packetHeadroom, maxPacketSize))
			c.Properties.MaximumPacketSize = &mps
			return c, nil
		},
		OnConnectionUp: func(_ *autopaho.ConnectionManager, ca *paho.Connack) {
			in.backoff.up()
			in.connected.Store(true)
			in.conn.set(StateConnected, "")
			lastErr.Store("")
			in.connections++
			in.log.Info("connected to broker", "url", in.cfg.URL.Redacted(), "client_id", in.cfg.ClientID, "session_present", ca.SessionPresent)
			if !ca.SessionPresent && (in.connections > 1 || hadSession) {
				in.sessionsLost.Add(1)
				in.log.Warn("the broker has no session for ferry although it had one: what it queued for ferry meanwhile is lost (broker restarted without persistence, or the session expired)",
					"url", in.cfg.URL.Redacted(), "client_id", in.cfg.ClientID, "session_expiry", in.cfg.SessionExpiry)
			}
			if w := in.connackWarnings(ca); !slices.Equal(w, in.warned) {
				for _, msg := range w {
					in.log.Warn(msg, "url", in.cfg.URL.Redacted())
				}
				in.warned = w
			}
			select {
			case up <- struct{}{}:
			default:
			}
		},
		OnConnectionDown: func() bool {
			in.backoff.down()
			in.connected.Store(false)
			in.subscribed.Store(false)
			in.conn.lost()
			in.log.Warn("connection to broker lost; reconnecting", "url", in.cfg.URL.Redacted())
			return true
		},
		OnConnectError: func(err error) {
			in.backoff.failed(err)
			// Once refused, a streak of failures stays refused, as for
			// the backoff.
			if state, _, _ := in.conn.load(); isRefusal(err) || state == StateRefused {
				in.conn.set(StateRefused, describeConnectError(err))
			} else {
				in.conn.set(StateUnreachable, describeConnectError(err))
			}
			if key := errorKey(err); lastErr.Swap(key) != key {
				in.log.Warn("cannot connect to broker; retrying with backoff", "url", in.cfg.URL.Redacted(), "err", describeConnectError(err))
			}
		},
		ClientConfig: paho.ClientConfig{
			ClientID: in.cfg.ClientID,
			// Not paho's manual acknowledgements: the session ignores the
			// Ack paho makes when onPublish returns, and the ack goroutine
			// acknowledges once the record is durable.
			Session:           in.sess,
			PingHandler:       ping,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){in.onPublish},
			OnClientError: func(err error) {
				in.conn.failed(err.Error())
				in.log.Warn("broker connection error", "err", err)
			},
			OnServerDisconnect: func(d *paho.Disconnect) {
				msg := fmt.Sprintf("the broker closed the connection: %s (reason code 0x%02x)", reasonName(d.ReasonCode), d.ReasonCode)
				if r := reasonString(d); r != "" {
					msg += ": " + r
				}
				in.conn.failed(msg)
				in.log.Warn("broker closed the connection", "reason_code", d.ReasonCode, "reason", reasonString(d))
			},
		},
	}
	if dialsItself(in.cfg.URL.Scheme) {
		cc.AttemptConnection = in.attemptConnection
	}
	cm, err := autopaho.NewConnection(connCtx, cc)
	if err != nil {
		close(ackAbandon)
		<-ackExited
		return fmt.Errorf("mqtt: connect to %s: %w", in.cfg.URL.Redacted(), err)
	}
	subCtx, stopSubscriber := context.WithCancel(connCtx)
	subscriberExited := make(chan struct{})
	go func() {
		defer close(subscriberExited)
		in.subscriber(subCtx, cm, up)
	}()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-in.fatal:
	}

	// Stop taking messages; the ack goroutine acknowledges the ones already
	// handed over as the sink reports them durable, and ends when all are.
	in.stop()
	close(ackStop)
	select {
	case <-ackExited:
	case <-time.After(in.stopWait):
		// The buffer is not taking records (full with when_full: block, or
		// stuck), or the connection takes no acknowledgements: those
		// messages stay unacknowledged and the broker redelivers them to
		// the next session.
		in.log.Warn("stopping without waiting longer for the buffer and the broker; unacknowledged messages will be redelivered", "waited", in.stopWait)
		close(ackAbandon)
		in.sess.setWriteDeadline(time.Now()) // a write stuck on the connection fails now
		select {
		case <-ackExited:
		case <-time.After(disconnectWait):
			in.log.Error("acknowledgement goroutine did not stop", "waited", disconnectWait)
		}
	}
	// DISCONNECT goes out after the last acknowledgement, and a connection
	// that takes nothing does not hold it up for long.
	in.sess.setWriteDeadline(time.Now().Add(disconnectWait))
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stopSubscriber()
	<-subscriberExited // a SUBSCRIBE in progress ends with its context
	if err := cm.Disconnect(dctx); err != nil && !errors.Is(err, context.Canceled) {
		in.log.Warn("disconnect from broker", "err", err)
	}
	// The connection is closed: a PINGREQ write still under way ends.
	if !ping.wait(disconnectWait) {
		in.log.Error("keep-alive write did not end", "waited", disconnectWait)
	}
	in.connected.Store(false)
	in.conn.set(StateStopped, "")
	return runErr
}

// errorKey is what tells connection errors apart for logging on change:
// the text without the addresses of a network error (a new local port
// each attempt).
func errorKey(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Op + ": " + op.Err.Error()
	}
	return err.Error()
}

// describeConnectError words a failed connection attempt for the log: a
// refusal by the broker names its reason.
func describeConnectError(err error) string {
	var ca *autopaho.ConnackError
	if errors.As(err, &ca) {
		msg := fmt.Sprintf("the broker refused the connection: %s (reason code 0x%02x)", reasonName(ca.ReasonCode), ca.ReasonCode)
		if ca.Reason != "" {
			msg += ": " + ca.Reason
		}
		return msg
	}
	return err.Error()
}

// onPublish runs on paho's router goroutine, once per message paho read,
// in arrival order: the messages bufConn does not read itself (see
// bufConn.readPublish), and all of them on a WebSocket connection.
func (in *Ingest) onPublish(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	l := in.sess.current()
	if l != nil {
		if c, ok := l.w.(*bufConn); ok {
			defer c.passed.Add(-1) // after the message is queued: bufConn may take the next itself
		}
	}
	m := &in.fromPaho
	m.topic, m.payload, m.id, m.qos = p.Topic, p.Payload, p.PacketID, p.QoS
	m.rec = buffer.Record{Retain: p.Retain}
	m.size, m.stub = stubSize(p)
	if pp := p.Properties; pp != nil {
		m.rec.ContentType = pp.ContentType
		m.rec.ResponseTopic = pp.ResponseTopic
		m.rec.CorrelationData = pp.CorrelationData
		m.rec.PayloadUTF8 = pp.PayloadFormat != nil && *pp.PayloadFormat == 1
		if len(pp.User) > 0 {
			props := m.props[:0]
			for _, u := range pp.User {
				props = append(props, buffer.Property{Key: u.Key, Value: u.Value})
			}
			m.rec.UserProperties, m.props = props, props[:0]
		}
	}
	in.receive(l, m, nil)
	return true, nil
}

// receive takes a message that came on l: it queues it for its
// acknowledgement and hands its record to the sink, whose done (settle)
// says when it is durable; it does not wait for that. It runs once per
// message, in arrival order, on paho's router goroutine (onPublish) or on
// its reading goroutine (bufConn), never on both at once (bufConn takes a
// message itself only once onPublish has returned for every message it
// passed to paho before it). m is reused once it returns. With try, the
// sink takes the record through it: if it has no room, receive returns
// false and the message is not taken (nothing is queued or counted).
func (in *Ingest) receive(l *link, m *inbound, try tryAppender) bool {
	defer m.reset() // keep no message alive
	size, stub := m.size, m.stub
	if !stub && in.cfg.MaxPayload > 0 && len(m.payload) > in.cfg.MaxPayload {
		stub, size = true, len(m.payload) // a connection without ferry's reader (WebSocket) reads it whole
	}
	if stub {
		in.droppedTooLarge.Add(1)
		if n, ok := in.tooLargeLog.due(); ok {
			in.log.Warn("messages dropped: payload larger than mqtt.max_payload_bytes (acknowledged, not stored)", "topic", m.topic, "bytes", size, "limit", in.cfg.MaxPayload, "messages", n)
		}
		in.bypass(pending{link: l, topic: m.topic, id: m.id, qos: m.qos})
		return true
	}
	if in.subs.check && !in.subs.matches(m.topic) {
		in.droppedUnsubscribed.Add(1)
		if n, ok := in.unsubscribedLog.due(); ok {
			in.log.Warn("messages dropped: no configured subscription matches their topic (they came through a filter removed from the configuration)", "topic", m.topic, "messages", n)
		}
		in.bypass(pending{link: l, topic: m.topic, id: m.id, qos: m.qos})
		return true
	}
	in.mu.Lock()
	if in.stopping {
		in.mu.Unlock()
		return true // not acknowledged: the broker keeps it for the next session
	}
	in.queue = append(in.queue, pending{link: l, topic: m.topic, id: m.id, qos: m.qos})
	in.mu.Unlock()

	rec := &m.rec
	rec.Topic, rec.Payload, rec.QoS, rec.ReceivedAt = m.topic, m.payload, m.qos, time.Now()
	taken, err := true, error(nil)
	if try != nil {
		taken, err = try.TryAppend(rec, in.settleFunc)
	} else {
		err = in.sink.Append(rec, in.settleFunc)
	}
	if err != nil || !taken {
		// done will not be called: the entry is the newest, take it back.
		in.mu.Lock()
		in.queue[len(in.queue)-1] = pending{}
		in.queue = in.queue[:len(in.queue)-1]
		in.mu.Unlock()
	}
	if taken || err != nil {
		in.received.Add(1) // handed to the sink, as before: Append failed or took it
	}
	if err != nil {
		in.fail(fmt.Errorf("mqtt: store message from %s: %w", m.topic, err))
		return true
	}
	return taken
}

// bypass queues the acknowledgement of a message that is not handed to the
// sink: it goes out in its turn, after those of the messages before it.
func (in *Ingest) bypass(e pending) {
	if e.qos == 0 {
		return // nothing to acknowledge
	}
	e.ok, e.bypass = true, true
	in.mu.Lock()
	if in.stopping {
		in.mu.Unlock()
		return
	}
	in.queue = append(in.queue, e)
	wake := in.settled == len(in.queue)-1 && !in.woken
	in.skipBypassed()
	if wake {
		in.woken = true
	}
	in.mu.Unlock()
	if wake {
		select {
		case in.wake <- struct{}{}:
		default:
		}
	}
}

// skipBypassed counts the bypassed entries at the front of the unsettled
// part of the queue as settled. in.mu is held.
func (in *Ingest) skipBypassed() {
	for in.settled < len(in.queue) && in.queue[in.settled].bypass {
		in.settled++
	}
}

// settle is the sink's done for every record. The sink calls it once per
// record, in append order, so it concerns the oldest entry without its
// done. It only marks the entry and wakes the ack goroutine: it never waits
// for the connection.
func (in *Ingest) settle(_ uint64, err error) {
	in.mu.Lock()
	if in.settled == len(in.queue) {
		in.mu.Unlock()
		in.log.Error("the sink reported on more records than it was given; ignored")
		return
	}
	e := &in.queue[in.settled]
	in.settled++
	e.ok = err == nil
	topic := e.topic
	in.skipBypassed()
	wake := !in.woken
	in.woken = true
	in.mu.Unlock()
	if wake {
		select {
		case in.wake <- struct{}{}:
		default:
		}
	}
	if err != nil {
		in.fail(fmt.Errorf("mqtt: store message from %s: %w", topic, err))
		return
	}
	in.stored.Add(1)
}

// sendAcks is the ack goroutine: it acknowledges the settled entries of the
// queue, in order, as they come. Once stop is closed it ends when the queue
// is empty (every message handed to the sink settled and acknowledged);
// once abandon is closed it ends at once, or as soon as a write in
// progress returns.
func (in *Ingest) sendAcks(stop, abandon <-chan struct{}, exited chan<- struct{}) {
	defer close(exited)
	var (
		batch    []pending
		out      []byte
		stopping bool
		failed   bool // a record was not stored: acknowledge nothing after it
	)
	for {
		select {
		case <-in.wake:
		case <-stop:
			stop, stopping = nil, true
		case <-abandon:
			return
		}
		in.mu.Lock()
		batch = append(batch[:0], in.queue[:in.settled]...)
		n := copy(in.queue, in.queue[in.settled:])
		clear(in.queue[n:])
		in.queue = in.queue[:n]
		in.settled, in.woken = 0, false
		in.mu.Unlock()
		out, failed = in.writeAcks(batch, out, failed)
		clear(batch)
		if stopping && n == 0 {
			return
		}
	}
}

// writeAcks acknowledges the durable QoS 1 and 2 messages of batch, in
// order, and returns out (emptied, for reuse) and failed. The PUBACKs for
// one connection are written in one call; a PUBREC goes through paho's
// session, after the PUBACKs before it.
func (in *Ingest) writeAcks(batch []pending, out []byte, failed bool) ([]byte, bool) {
	var (
		to      *link // the connection of the PUBACKs in out
		inOut   int   // how many
		written int
		lost    int
	)
	flush := func() {
		if inOut == 0 {
			return
		}
		if err := to.write(out); err != nil {
			lost += inOut
		} else {
			written += inOut
		}
		out, inOut = out[:0], 0
	}
	for i := range batch {
		e := &batch[i]
		if !e.ok {
			failed = true
		}
		if failed || e.qos == 0 {
			continue
		}
		if e.link != to {
			flush()
			to = e.link
		}
		switch {
		case to == nil:
			lost++
		case e.qos == 1:
			out = appendPuback(out, e.id)
			inOut++
		default:
			flush()
			if err := in.sess.pubrec(to, e.id); err != nil {
				lost++
			} else {
				written++
			}
		}
	}
	flush()
	in.acked.Add(uint64(written))
	if lost > 0 {
		in.log.Debug("acknowledgements not sent (connection gone); the broker will deliver those messages again", "messages", lost)
	}
	return out, failed
}

// stop makes receive refuse new messages.
func (in *Ingest) stop() {
	in.mu.Lock()
	in.stopping = true
	in.mu.Unlock()
}

func (in *Ingest) fail(err error) {
	in.stop()
	in.fatalOnce.Do(func() { in.fatal <- err })
}

func reasonString(d *paho.Disconnect) string {
	if d.Properties != nil {
		return d.Properties.ReasonString
	}
	return ""
}

// logEvery rate-limits a log line about repeated events to one every
// logInterval, counting the events in between. It is for one goroutine.
type logEvery struct {
	last time.Time
	n    uint64
}

const logInterval = 10 * time.Second

// due counts an event and reports whether to log now, with the events
// since the last line.
func (l *logEvery) due() (uint64, bool) {
	l.n++
	if now := time.Now(); now.Sub(l.last) >= logInterval {
		n := l.n
		l.last, l.n = now, 0
		return n, true
	}
	return 0, false
}
