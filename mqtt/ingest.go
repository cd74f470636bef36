// Package mqtt subscribes to an MQTT v5 broker and turns every message into a
// buffer record.
//
// Guarantee: a QoS 1 or 2 message is acknowledged to the broker (PUBACK or
// PUBREC) only after its record is durable in the sink. Acknowledgements go
// out in the order the messages arrived, as MQTT requires; many messages are
// in flight at once (up to Receive Maximum) and share one sink commit, so
// ingest never waits for one fsync per message. The session is persistent
// (clean start false, a session expiry interval): while ferry is stopped or
// disconnected the broker keeps the messages, and after a crash it
// redelivers the ones that were not acknowledged. Duplicates are possible;
// loss of an acknowledged message is not.
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-edge/ferry/buffer"
)

// Sink is where records go: *buffer.Buffer. Append must call done exactly
// once, after the record is durable (err == nil) or could not be stored,
// and in append order.
type Sink interface {
	Append(rec *buffer.Record, done func(seq uint64, err error)) error
}

// Subscription is one topic filter ferry subscribes to.
type Subscription struct {
	Filter string
	QoS    byte
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
	Subscriptions  []Subscription
	GatewayID      string // not sent; for logs
	Logger         *slog.Logger
}

// stopWait bounds how long Run, when stopping, waits for records handed to
// the sink to become durable so their acknowledgements can go out.
const stopWait = 10 * time.Second

// Stats are ingest counters since Run started.
type Stats struct {
	Received  uint64 // messages handed to the sink
	Stored    uint64 // records the sink reported durable
	Connected bool   // a connection to the broker is up
	// Subscribed is true once the broker granted the subscriptions on the
	// current connection.
	Subscribed bool
}

// Ingest is a running MQTT subscription feeding a sink.
type Ingest struct {
	cfg  Config
	sink Sink
	log  *slog.Logger
	// dial opens the network connection under MQTT (and TLS) for the
	// schemes ingest dials itself; tests replace it.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	received, stored atomic.Uint64
	connected        atomic.Bool
	subscribed       atomic.Bool

	mu       sync.Mutex
	stopping bool           // no new messages are taken; guarded by mu
	pending  sync.WaitGroup // appends whose callback has not run; Add under mu

	fatalOnce sync.Once
	fatal     chan error
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
	return &Ingest{
		cfg:   cfg,
		sink:  sink,
		log:   cfg.Logger.With("component", "mqtt"),
		dial:  dialProxied,
		fatal: make(chan error, 1),
	}, nil
}

// Stats returns the ingest counters.
func (in *Ingest) Stats() Stats {
	return Stats{
		Received:   in.received.Load(),
		Stored:     in.stored.Load(),
		Connected:  in.connected.Load(),
		Subscribed: in.subscribed.Load(),
	}
}

// Run connects, subscribes and feeds the sink until ctx is done or the sink
// fails. On ctx done it stops taking messages, waits for the records already
// handed to the sink to become durable and their acknowledgements to go out,
// then disconnects; it returns nil. A sink failure is returned as an error:
// the messages concerned were not acknowledged, so the broker keeps them.
func (in *Ingest) Run(ctx context.Context) error {
	connCtx, cancelConn := context.WithCancel(context.Background())
	defer cancelConn()

	var lastErr atomic.Value // string: log connect errors on change only
	cc := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{in.cfg.URL},
		TlsCfg:                        in.cfg.TLS,
		KeepAlive:                     uint16(in.cfg.KeepAlive / time.Second),
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         uint32(in.cfg.SessionExpiry / time.Second),
		ReconnectBackoff:              autopaho.NewExponentialBackoff(500*time.Millisecond, 30*time.Second, time.Second, 2),
		ConnectTimeout:                in.cfg.ConnectTimeout,
		ConnectUsername:               in.cfg.Username,
		ConnectPassword:               in.cfg.Password,
		ConnectPacketBuilder: func(c *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if c.Properties == nil {
				c.Properties = &paho.ConnectProperties{}
			}
			rm := in.cfg.ReceiveMaximum
			c.Properties.ReceiveMaximum = &rm
			return c, nil
		},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, ca *paho.Connack) {
			in.connected.Store(true)
			lastErr.Store("")
			in.log.Info("connected to broker", "url", in.cfg.URL.Redacted(), "client_id", in.cfg.ClientID, "session_present", ca.SessionPresent)
			go in.subscribe(connCtx, cm)
		},
		OnConnectionDown: func() bool {
			in.connected.Store(false)
			in.subscribed.Store(false)
			in.log.Warn("connection to broker lost; reconnecting", "url", in.cfg.URL.Redacted())
			return true
		},
		OnConnectError: func(err error) {
			if msg := err.Error(); lastErr.Swap(msg) != msg {
				in.log.Warn("cannot connect to broker; retrying with backoff", "url", in.cfg.URL.Redacted(), "err", err)
			}
		},
		ClientConfig: paho.ClientConfig{
			ClientID:                   in.cfg.ClientID,
			EnableManualAcknowledgment: true,
			SendAcksInterval:           10 * time.Millisecond,
			OnPublishReceived:          []func(paho.PublishReceived) (bool, error){in.onPublish},
			OnClientError: func(err error) {
				in.log.Warn("broker connection error", "err", err)
			},
			OnServerDisconnect: func(d *paho.Disconnect) {
				in.log.Warn("broker closed the connection", "reason_code", d.ReasonCode, "reason", reasonString(d))
			},
		},
	}
	if dialsItself(in.cfg.URL.Scheme) {
		cc.AttemptConnection = in.attemptConnection
	}
	cm, err := autopaho.NewConnection(connCtx, cc)
	if err != nil {
		return fmt.Errorf("mqtt: connect to %s: %w", in.cfg.URL.Redacted(), err)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-in.fatal:
	}

	// Stop taking messages; let the ones already handed over commit and
	// their acknowledgements go out (the ack sender runs every 10ms).
	in.stop()
	stored := make(chan struct{})
	go func() { in.pending.Wait(); close(stored) }()
	select {
	case <-stored:
		if runErr == nil {
			time.Sleep(50 * time.Millisecond)
		}
	case <-time.After(stopWait):
		// The buffer is not taking records (full with when_full: block, or
		// stuck): those messages stay unacknowledged and the broker
		// redelivers them to the next session.
		in.log.Warn("stopping without waiting longer for the buffer; unacknowledged messages will be redelivered", "waited", stopWait)
	}
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cm.Disconnect(dctx); err != nil && !errors.Is(err, context.Canceled) {
		in.log.Warn("disconnect from broker", "err", err)
	}
	in.connected.Store(false)
	return runErr
}

func (in *Ingest) subscribe(ctx context.Context, cm *autopaho.ConnectionManager) {
	s := &paho.Subscribe{}
	for _, sub := range in.cfg.Subscriptions {
		// RetainHandling 1: retained messages only for a new subscription, so
		// a reconnect does not bring the same retained messages again.
		s.Subscriptions = append(s.Subscriptions, paho.SubscribeOptions{Topic: sub.Filter, QoS: sub.QoS, RetainHandling: 1})
	}
	sa, err := cm.Subscribe(ctx, s)
	if err != nil {
		if ctx.Err() == nil {
			in.log.Error("subscribe failed", "err", err)
		}
		return
	}
	granted := true
	for i, code := range sa.Reasons {
		if i >= len(in.cfg.Subscriptions) {
			break
		}
		sub := in.cfg.Subscriptions[i]
		if code >= 0x80 {
			granted = false
			in.log.Error("broker refused subscription", "filter", sub.Filter, "reason_code", code)
		} else if code < sub.QoS {
			in.log.Warn("broker granted a lower QoS than asked", "filter", sub.Filter, "asked", sub.QoS, "granted", code)
		} else {
			in.log.Info("subscribed", "filter", sub.Filter, "qos", code)
		}
	}
	in.subscribed.Store(granted)
}

// onPublish runs on paho's router goroutine, once per message in arrival
// order. It must not block on the commit: it hands the record over and the
// commit callback acknowledges.
func (in *Ingest) onPublish(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	in.mu.Lock()
	if in.stopping {
		in.mu.Unlock()
		return true, nil // not acknowledged: the broker keeps it for the next session
	}
	in.pending.Add(1)
	in.mu.Unlock()
	rec := buffer.Record{
		Topic:      p.Topic,
		Payload:    p.Payload,
		QoS:        p.QoS,
		Retain:     p.Retain,
		ReceivedAt: time.Now(),
	}
	if pp := p.Properties; pp != nil {
		rec.ContentType = pp.ContentType
		rec.ResponseTopic = pp.ResponseTopic
		rec.CorrelationData = pp.CorrelationData
		rec.PayloadUTF8 = pp.PayloadFormat != nil && *pp.PayloadFormat == 1
		for _, u := range pp.User {
			rec.UserProperties = append(rec.UserProperties, buffer.Property{Key: u.Key, Value: u.Value})
		}
	}
	in.received.Add(1)
	client := pr.Client
	err := in.sink.Append(&rec, func(_ uint64, err error) {
		defer in.pending.Done()
		if err != nil {
			in.fail(fmt.Errorf("mqtt: store message from %s: %w", p.Topic, err))
			return
		}
		in.stored.Add(1)
		if p.QoS > 0 {
			// Ack on the client that received it: after a reconnect the old
			// client's acks go nowhere and the broker redelivers.
			if err := client.Ack(p); err != nil {
				in.log.Debug("ack not sent (connection gone); broker will redeliver", "topic", p.Topic, "err", err)
			}
		}
	})
	if err != nil {
		in.pending.Done()
		in.fail(fmt.Errorf("mqtt: store message from %s: %w", p.Topic, err))
	}
	return true, nil
}

// stop makes onPublish refuse new messages.
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
