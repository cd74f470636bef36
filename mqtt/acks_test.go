package mqtt

import (
	"context"
	"net"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// wedgeConn is a TCP connection whose writes can be held, as a socket's are
// once the peer stops reading and the buffers are full: a held Write waits
// until the wedge is lifted, the write deadline passes or the connection is
// closed.
type wedgeConn struct {
	net.Conn
	wedged   atomic.Bool
	blocked  atomic.Int32 // writes held now
	closed   atomic.Bool
	deadline atomic.Pointer[time.Time]
}

func (c *wedgeConn) Write(p []byte) (int, error) {
	if c.wedged.Load() {
		c.blocked.Add(1)
		defer c.blocked.Add(-1)
		for c.wedged.Load() {
			if c.closed.Load() {
				return 0, net.ErrClosed
			}
			if d := c.deadline.Load(); d != nil && !d.IsZero() && time.Now().After(*d) {
				return 0, os.ErrDeadlineExceeded
			}
			time.Sleep(time.Millisecond)
		}
	}
	return c.Conn.Write(p)
}

func (c *wedgeConn) SetWriteDeadline(t time.Time) error {
	c.deadline.Store(&t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *wedgeConn) SetDeadline(t time.Time) error {
	c.deadline.Store(&t)
	return c.Conn.SetDeadline(t)
}

func (c *wedgeConn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

// wedgeDialer is ingest's dial for a test: it dials TCP and keeps the
// connection as a wedgeConn.
type wedgeDialer struct{ last atomic.Pointer[wedgeConn] }

func (d *wedgeDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	w := &wedgeConn{Conn: c}
	d.last.Store(w)
	return w, nil
}

// The sink's done never waits for the broker: with the connection taking
// nothing (an acknowledgement write stuck in it), the sink's own goroutine
// still gets through every done at once. The acknowledgements go out once
// the connection moves again.
func TestWedgedConnectionDoesNotHoldUpTheSink(t *testing.T) {
	broker := testenv.NewBroker(t)
	sink := newCommitterSink(t)
	var d wedgeDialer
	u, _ := url.Parse(broker.URL())
	in, done, cancel := startIngestWith(t, Config{URL: u}, sink, func(in *Ingest) { in.dial = d.dial })
	defer cancel()
	conn := d.last.Load()
	conn.wedged.Store(true)

	const n = 200
	publishN(t, publisher(t, broker.Addr), n, 1)
	waitFor(t, 10*time.Second, "the sink's done calls to return", func() bool { return sink.returned.Load() == n })
	waitFor(t, 5*time.Second, "an acknowledgement write to be stuck", func() bool { return conn.blocked.Load() > 0 })
	if l := time.Duration(sink.longest.Load()); l > 100*time.Millisecond {
		t.Errorf("a done call took %v", l)
	}
	if a := in.Stats().Acknowledged; a != 0 {
		t.Fatalf("%d acknowledgements through a wedged connection", a)
	}

	conn.wedged.Store(false)
	waitFor(t, 10*time.Second, "the acknowledgements to go out", func() bool { return in.Stats().Acknowledged == n })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Stopping with the connection wedged takes stopWait and a little more,
// not for ever, and leaves no goroutine behind (TestMain checks); the
// messages whose acknowledgements did not get out come again to the next
// session.
func TestStopWithAWedgedConnection(t *testing.T) {
	broker := testenv.NewBroker(t)
	sink := newCommitterSink(t)
	var d wedgeDialer
	u, _ := url.Parse(broker.URL())
	in, done, cancel := startIngestWith(t, Config{URL: u}, sink, func(in *Ingest) {
		in.dial = d.dial
		in.stopWait = 300 * time.Millisecond
	})
	defer cancel()
	conn := d.last.Load()
	conn.wedged.Store(true)

	const n = 20
	publishN(t, publisher(t, broker.Addr), n, 1)
	waitFor(t, 10*time.Second, "the sink's done calls to return", func() bool { return sink.returned.Load() == n })
	waitFor(t, 5*time.Second, "an acknowledgement write to be stuck", func() bool { return conn.blocked.Load() > 0 })

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return with the connection wedged")
	}
	if took, limit := time.Since(start), in.stopWait+disconnectWait+2*time.Second; took > limit {
		t.Fatalf("Run took %v to stop, want at most %v", took, limit)
	}
	if a := in.Stats().Acknowledged; a != 0 {
		t.Fatalf("%d acknowledgements through a wedged connection", a)
	}

	if broker.Kind != testenv.KindMosquitto {
		return // mochi-mqtt v2.7.9 does not hand a resumed session to a new connection reliably
	}
	again := newCommitterSink(t)
	_, done2, cancel2 := startIngest(t, broker.URL(), again)
	waitFor(t, 10*time.Second, "the unacknowledged messages to come again", func() bool { return again.returned.Load() >= n })
	cancel2()
	if err := <-done2; err != nil {
		t.Fatal(err)
	}
}

// QoS 2: the PUBREC goes out once the record is durable (through paho's
// session, which then answers the broker's PUBREL), and a message so
// acknowledged does not come again to the next session.
func TestQoS2IsAcknowledged(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt v2.7.9 does not hand a resumed session to a new connection reliably")
	u, _ := url.Parse(broker.URL())
	qos2 := []Subscription{{Filter: "sensors/#", QoS: 2}}
	sink := newCommitterSink(t)
	in, done, cancel := startIngestWith(t, Config{URL: u, Subscriptions: qos2}, sink, nil)
	defer cancel()
	const n = 50
	publishN(t, publisher(t, broker.Addr), n, 2)
	waitFor(t, 10*time.Second, "the PUBRECs to go out", func() bool { return in.Stats().Acknowledged == n })
	time.Sleep(200 * time.Millisecond) // PUBREL and PUBCOMP
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	again := newCommitterSink(t)
	_, done2, cancel2 := startIngestWith(t, Config{URL: u, Subscriptions: qos2}, again, nil)
	time.Sleep(500 * time.Millisecond)
	cancel2()
	if err := <-done2; err != nil {
		t.Fatal(err)
	}
	if got := again.returned.Load(); got != 0 {
		t.Fatalf("%d acknowledged QoS 2 messages came again", got)
	}
}
