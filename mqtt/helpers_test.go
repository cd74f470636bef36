package mqtt

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-edge/ferry/buffer"
)

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// committerSink stands in for a sink whose done runs synchronously on a
// goroutine of its own, as the buffer's committer (or the forwarder, once
// Kafka acknowledged a record) calls it. It counts the done calls that
// returned and keeps the longest.
type committerSink struct {
	queue    chan func(uint64, error)
	quit     chan struct{}
	exited   chan struct{}
	returned atomic.Int64
	longest  atomic.Int64 // nanoseconds
}

func newCommitterSink(t *testing.T) *committerSink {
	s := &committerSink{
		queue:  make(chan func(uint64, error), 1<<16),
		quit:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	go func() {
		defer close(s.exited)
		var seq uint64
		for {
			select {
			case done := <-s.queue:
				seq++
				start := time.Now()
				done(seq, nil)
				if d := int64(time.Since(start)); d > s.longest.Load() {
					s.longest.Store(d)
				}
				s.returned.Add(1)
			case <-s.quit:
				return
			}
		}
	}()
	t.Cleanup(func() { close(s.quit); <-s.exited })
	return s
}

func (s *committerSink) Append(_ *buffer.Record, done func(uint64, error)) error {
	select {
	case s.queue <- done:
		return nil
	case <-s.quit:
		return errors.New("sink closed")
	}
}

func publishN(t *testing.T, pub *paho.Client, n int, qos byte) {
	t.Helper()
	for i := range n {
		if _, err := pub.Publish(context.Background(), &paho.Publish{Topic: "sensors/a", QoS: qos, Payload: fmt.Appendf(nil, "m%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
}
