package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// TestLoad checks the publishers' counts and pacing against a broker with
// a subscriber: a message budget is met exactly, paced or flat out, and a
// rate is held over a duration.
func TestLoad(t *testing.T) {
	b := testenv.NewBroker(t)
	for _, c := range []struct {
		name     string
		rate     float64
		duration time.Duration
		messages int64
		want     int64 // exact, or about rate*duration
	}{
		{name: "paced budget", rate: 2000, messages: 1234, want: 1234},
		{name: "flat-out budget", messages: 500, want: 500},
		{name: "paced duration", rate: 1000, duration: time.Second, want: 1000},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.rate == 0 {
				testenv.RequireMosquitto(t, b, "mochi-mqtt can stall under flat-out QoS 1 publishing")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			const devices = 7
			topics := "load-" + fmt.Sprint(time.Now().UnixNano()) + "/%s/t"
			tr := newTracker(devices)
			s, err := startSubscriber(ctx, b.Addr, fmt.Sprintf(topics, "+"), 1, tr)
			if err != nil {
				t.Fatal(err)
			}
			defer s.close()
			l, err := newLoad(ctx, loadConfig{BrokerAddr: b.Addr, Devices: devices, QoS: 1, Payload: 100,
				Rate: c.rate, Duration: c.duration, Messages: c.messages, Tick: 2 * time.Millisecond,
				TopicFormat: topics, ClientTag: "test"})
			if err != nil {
				t.Fatal(err)
			}
			l.run()
			select {
			case <-l.done:
			case <-ctx.Done():
				t.Fatal("publishers did not finish")
			}
			n := l.counts()
			if n.Sent != n.Acked || n.Errors != 0 {
				t.Errorf("sent %d, acknowledged %d, errors %d (last %v)", n.Sent, n.Acked, n.Errors, n.LastErr)
			}
			if c.messages > 0 && (n.Sent != c.want || n.Unsent != 0) {
				t.Errorf("sent %d, %d permits unused; want exactly %d", n.Sent, n.Unsent, c.want)
			}
			if c.duration > 0 && (n.Sent < c.want*95/100 || n.Sent > c.want*101/100) {
				t.Errorf("sent %d in %v at %g/s; want about %d", n.Sent, c.duration, c.rate, c.want)
			}
			if c.rate > 0 {
				want := time.Duration(float64(n.Sent) / c.rate * float64(time.Second))
				if el := l.elapsed(); el < want*9/10 || el > want*13/10 {
					t.Errorf("%d messages at %g/s took %v, want about %v", n.Sent, c.rate, el, want)
				}
			}
			deadline := time.Now().Add(10 * time.Second)
			for !tr.caughtUp(l.acked()) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if d := tr.summary(l.acked()); d.Unique != n.Acked || d.Lost != 0 || d.OutOfOrder != 0 || d.Duplicates != 0 {
				t.Errorf("subscriber: %+v, acknowledged %d", d, n.Acked)
			}
		})
	}
}
