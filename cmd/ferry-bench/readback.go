package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/twmb/franz-go/pkg/kgo"
)

// readback consumes a Kafka topic from its start (all partitions, no
// consumer group) and feeds every record to a tracker, stamped with the
// time its fetch returned. A fetch returns as soon as a record is there
// (kfake answers a waiting fetch when a produce lands), so the latency it
// measures includes one fetch round trip, not a polling interval.
type readback struct {
	cl     *kgo.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	lastErr error
}

// startReadback starts consuming topic into t.
func startReadback(brokers []string, topic string, t *tracker) (*readback, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(250*time.Millisecond),
		// After an outage (which resets every connection to kfake,
		// this one's too) come back at once: the drain measured
		// must be ferry's, not this consumer's backoff.
		kgo.RetryBackoffFn(func(int) time.Duration { return 20 * time.Millisecond }),
	)
	if err != nil {
		return nil, fmt.Errorf("read back %s: kafka client: %w", topic, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &readback{cl: cl, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			now := time.Now()
			fs.EachError(func(_ string, _ int32, err error) {
				if !errors.Is(err, context.Canceled) {
					r.mu.Lock()
					r.lastErr = err
					r.mu.Unlock()
				}
			})
			fs.EachRecord(func(rec *kgo.Record) { t.add(rec.Value, rec.Partition, now) })
		}
	}()
	return r, nil
}

// err returns the last fetch error, for diagnostics.
func (r *readback) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// close stops consuming.
func (r *readback) close() {
	r.cancel()
	<-r.done
	r.cl.Close()
}

// subscriber is the "broker alone" far end: an MQTT v5 subscription (clean
// session, Receive Maximum 1000 like ferry's) in this process that feeds
// every message to a tracker and acknowledges it at once.
type subscriber struct {
	c *paho.Client
}

// startSubscriber subscribes to filter at qos on the broker at addr.
func startSubscriber(ctx context.Context, addr, filter string, qos byte, t *tracker) (*subscriber, error) {
	conn, err := dialTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	const id = "ferry-bench-subscriber"
	c := paho.NewClient(paho.ClientConfig{
		Conn:     conn,
		ClientID: id,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			t.add(pr.Packet.Payload, -1, time.Now())
			return true, nil
		}},
	})
	recvMax := uint16(1000)
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30,
		Properties: &paho.ConnectProperties{ReceiveMaximum: &recvMax}}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("subscriber: connect to %s: %w", addr, err)
	}
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}}); err != nil {
		_ = c.Disconnect(&paho.Disconnect{})
		return nil, fmt.Errorf("subscriber: subscribe %s: %w", filter, err)
	}
	return &subscriber{c: c}, nil
}

// close disconnects.
func (s *subscriber) close() { _ = s.c.Disconnect(&paho.Disconnect{}) }
