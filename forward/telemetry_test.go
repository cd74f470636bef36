package forward

import (
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Neither client asks for KIP-714 client metrics: every push would
// compress them with the codec the broker picks (8 MB of heap for lz4's
// blocks), more than the rest of an idle ferry.
func TestNoClientMetrics(t *testing.T) {
	c := newCluster(t, "t", "status")
	var asked atomic.Int64
	for _, key := range []kmsg.Key{kmsg.GetTelemetrySubscriptions, kmsg.PushTelemetry} {
		c.ControlKey(int16(key), func(kmsg.Request) (kmsg.Response, error, bool) {
			c.KeepControl()
			asked.Add(1)
			return nil, nil, false // kfake answers as usual
		})
	}
	b := newBuffer(t)
	f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "t", "{device}")}, StatusTopic: "status"}, b)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	appendN(t, b, "s/dev", 10)
	waitFor(t, "the records to be delivered", func() bool { return f.Stats().Delivered == 10 })
	stop()
	if n := asked.Load(); n > 0 {
		t.Errorf("%d client-metrics requests, want none", n)
	}
}
