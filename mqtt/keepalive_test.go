package mqtt

import (
	"context"
	"log/slog"
	"net"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/testenv"
)

// slowSink is a disk that takes each record slowly: Append waits per
// record, as the buffer's Append does while its tail is full and commits
// crawl.
type slowSink struct {
	per    time.Duration
	stored atomic.Int64
}

func (s *slowSink) Append(_ *buffer.Record, done func(uint64, error)) error {
	time.Sleep(s.per)
	n := s.stored.Add(1)
	done(uint64(n), nil)
	return nil
}

// A publisher that outruns the disk: ferry stops reading (the broker holds
// the rest) but its keep-alive goes on, so the connection stays up for many
// keep-alive periods, and ferry's memory stays flat.
func TestSlowSinkKeepsTheConnectionAndMemoryFlat(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt v2.7.9 stalls under sustained load")
	u, _ := url.Parse(broker.URL())
	var log logBuffer
	sink := &slowSink{per: 5 * time.Millisecond}
	const payload = 16 << 10
	cfg := Config{URL: u, KeepAlive: time.Second, ReceiveMaximum: 50, MaxPayload: 64 << 10,
		Logger:        slog.New(slog.NewTextHandler(&log, nil)),
		Subscriptions: []Subscription{{Filter: "sensors/#", QoS: 1}}}
	in, done, cancel := startIngestWith(t, cfg, sink, nil)
	defer cancel()

	// Publish QoS 0 and QoS 1 far faster than 200 a second for 5 s
	// (5 keep-alive periods).
	pub := publisher(t, broker.Addr)
	body := []byte(strings.Repeat("x", payload))
	ctx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	var peak uint64
	var ms runtime.MemStats
	for i := 0; ctx.Err() == nil; i++ {
		if _, err := pub.Publish(context.Background(), &paho.Publish{Topic: "sensors/a", QoS: byte(i % 2), Payload: body}); err != nil {
			t.Fatal(err)
		}
		if i%200 == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
	}
	st := in.Stats()
	t.Logf("stored %d messages; heap in use at most %d MiB", sink.stored.Load(), peak>>20)
	if strings.Contains(log.String(), "connection to broker lost") || !st.Connected {
		t.Errorf("the connection dropped while the sink was slow:\n%s", log.String())
	}
	// ReceiveMaximum messages in paho's queue, the bufio reader and one
	// message being stored, with room for the test's own publisher.
	if limit := uint64(24 << 20); peak > limit {
		t.Errorf("heap in use reached %d MiB, want at most %d MiB", peak>>20, limit>>20)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// freezableProxy passes bytes between ferry and the broker; once frozen,
// nothing from the broker reaches ferry (ferry's packets still reach the
// broker, so the broker keeps the connection), as a broker that hangs.
func freezableProxy(t *testing.T, addr string) (string, *atomic.Bool) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var frozen atomic.Bool
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	track := func(c net.Conn) { mu.Lock(); conns = append(conns, c); mu.Unlock() }
	pipe := func(dst, src net.Conn, freezes bool) {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				dst.Close()
				return
			}
			if !freezes || !frozen.Load() {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			track(c)
			track(b)
			wg.Add(2)
			go pipe(b, c, false)
			go pipe(c, b, true)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), &frozen
}

// The keep-alive still finds a broker that went silent while ferry waits
// for it: the connection is given up within two keep-alive periods.
func TestSilentBrokerIsDetected(t *testing.T) {
	broker := testenv.NewBroker(t)
	addr, frozen := freezableProxy(t, broker.Addr)
	u, _ := url.Parse("tcp://" + addr)
	in, done, cancel := startIngestWith(t, Config{URL: u, KeepAlive: time.Second}, &topicSink{}, nil)
	defer cancel()
	frozen.Store(true)
	start := time.Now()
	waitFor(t, 5*time.Second, "the connection to be given up", func() bool { return !in.Stats().Connected })
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("a silent broker was noticed after %v, want within 2 keep-alive periods", took)
	}
	frozen.Store(false)
	stopIngest(t, done, cancel)
}
