package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// watch reports a stall: records in flight and no acknowledgement for
// StallTimeout, which is all a silent uplink shows. The records stay with
// the producer, which keeps retrying them.
func (f *Forwarder) watch(ctx context.Context) {
	t := time.NewTicker(f.cfg.StallTimeout / 5)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f.checkRateCap()
			n := f.inflight.Load()
			since := time.Duration(monoNow() - f.lastAck.Load())
			if n > 0 && since >= f.cfg.StallTimeout {
				f.setError(fmt.Errorf("%w: %d records in flight, none acknowledged for %v; the producer keeps retrying them", errStalled, n, since.Truncate(time.Second)))
			}
		}
	}
}

// errStalled marks the error watch reports.
var errStalled = errors.New("no acknowledgement from Kafka")

// errConnect marks the error of a failed connection to a broker.
var errConnect = errors.New("connect to Kafka broker")

// connectError is the error of a failed connection to the broker meta.
func connectError(meta kgo.BrokerMetadata, err error) error {
	return fmt.Errorf("%w %s: %w", errConnect, net.JoinHostPort(meta.Host, strconv.Itoa(int(meta.Port))), err)
}

// setError records the problem forwarding is waiting on, logging it when
// it changes.
func (f *Forwarder) setError(err error) {
	f.lastErr.Store(err.Error())
	f.kafka.set(kafkaState(err), err.Error())
	if key := errKey(err); f.lastKey.Swap(key) != key {
		f.log.Error("cannot deliver to Kafka; records wait in the buffer", "err", err)
	}
}

// errKey is err's text without what changes on every attempt (the local
// port of a connection, the length of a stall), so a repeated failure is
// logged once.
func errKey(err error) string {
	if errors.Is(err, errStalled) {
		return errStalled.Error()
	}
	var op *net.OpError
	if errors.As(err, &op) {
		c := *op
		c.Source = nil
		return c.Error()
	}
	return err.Error()
}

// clearError notes that Kafka acknowledged records, logging the recovery;
// while a topic is parked its error stands.
func (f *Forwarder) clearError() {
	if f.parkedTopics.Load() > 0 {
		return
	}
	f.kafka.acknowledged()
	if f.lastErr.Load().(string) != "" && f.lastErr.Swap("") != "" {
		f.lastKey.Store("")
		f.log.Info("Kafka is accepting records again")
	}
}

// hooks watch the producer's connections, so an unreachable Kafka shows in
// the log, in Stats and in the status record even while the producer
// retries on its own.
type hooks struct{ f *Forwarder }

func (h hooks) OnBrokerConnect(meta kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil {
		h.f.setError(connectError(meta, err))
		return
	}
	h.f.kafka.connected()
}

// monoBase and monoNow measure time on the monotonic clock, which a step
// of the wall clock (NTP syncing a board that booted with a stale one)
// does not move: a stall is judged by it.
var monoBase = time.Now()

func monoNow() int64 { return int64(time.Since(monoBase)) }
