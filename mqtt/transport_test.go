package mqtt

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// tlsProxy terminates TLS on 127.0.0.1 and passes the bytes on to the
// broker at addr; it stops when the test ends.
func tlsProxy(t *testing.T, addr string, cert tls.Certificate) string {
	t.Helper()
	return tlsProxyWith(t, addr, &tls.Config{Certificates: []tls.Certificate{cert}})
}

// tlsProxyWith is tlsProxy with the server's TLS config.
func tlsProxyWith(t *testing.T, addr string, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				// The broker is dialled only after the handshake: a client
				// that refuses the certificate never reaches it, so no
				// broker connection races the broker's shutdown (mochi's
				// Close is not safe against a connection it is accepting).
				if err := c.(*tls.Conn).Handshake(); err != nil {
					c.Close()
					return
				}
				b, err := net.Dial("tcp", addr)
				if err != nil {
					c.Close()
					return
				}
				mu.Lock()
				conns = append(conns, b)
				mu.Unlock()
				wg.Add(1)
				go func() { defer wg.Done(); io.Copy(b, c); b.Close() }()
				io.Copy(c, b)
				c.Close()
			}()
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
	return ln.Addr().String()
}

// Over TLS (ingest dials and handshakes itself) messages are stored and
// acknowledged; the server name comes from the URL.
func TestTLS(t *testing.T) {
	broker := testenv.NewBroker(t)
	cert, pool := testenv.SelfSignedCert(t, []net.IP{net.IPv4(127, 0, 0, 1)}, nil)
	for _, scheme := range []string{"ssl", "tls", "mqtts"} {
		t.Run(scheme, func(t *testing.T) {
			u, _ := url.Parse(scheme + "://" + tlsProxy(t, broker.Addr, cert))
			sink := newCommitterSink(t)
			in, done, cancel := startIngestWith(t, Config{URL: u, TLS: &tls.Config{RootCAs: pool}}, sink, nil)
			defer cancel()
			const n = 20
			publishN(t, publisher(t, broker.Addr), n, 1)
			waitFor(t, 10*time.Second, "the acknowledgements", func() bool { return in.Stats().Acknowledged == n })
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A certificate the config does not trust fails the connection.
func TestTLSRefusesAnUntrustedBroker(t *testing.T) {
	broker := testenv.NewBroker(t)
	cert, _ := testenv.SelfSignedCert(t, []net.IP{net.IPv4(127, 0, 0, 1)}, nil)
	u, _ := url.Parse("ssl://" + tlsProxy(t, broker.Addr, cert))
	in, err := New(Config{URL: u, ClientID: "ferry-test", Subscriptions: []Subscription{{Filter: "sensors/#", QoS: 1}}}, newCommitterSink(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = in.attemptConnection(t.Context(), autopaho.ClientConfig{}, u)
	if err == nil {
		t.Fatal("connected to a broker with an untrusted certificate")
	}
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("error %v, want an unknown authority", err)
	}
}

// webSocketBroker starts an embedded broker with a WebSocket listener on
// loopback and returns it and its URL; it stops when the test ends.
func webSocketBroker(t *testing.T) (*mochi.Server, *url.URL) {
	t.Helper()
	caps := mochi.NewDefaultServerCapabilities()
	srv := mochi.New(&mochi.Options{Capabilities: caps, InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := srv.AddListener(listeners.NewWebsocket(listeners.Config{ID: "ws", Address: addr})); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	u, _ := url.Parse("ws://" + addr + "/")
	return srv, u
}

// WebSockets are autopaho's own connection; the acknowledgements the ack
// goroutine writes to it reach the broker, which then holds nothing in
// flight for ferry.
func TestWebSocket(t *testing.T) {
	srv, u := webSocketBroker(t)
	sink := newCommitterSink(t)
	in, done, cancel := startIngestWith(t, Config{URL: u}, sink, nil)
	defer cancel()
	const n = 20
	for range n {
		if err := srv.Publish("sensors/a", []byte("x"), false, 1); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the acknowledgements", func() bool { return in.Stats().Acknowledged == n })
	waitFor(t, 5*time.Second, "the broker to hold nothing in flight", func() bool {
		cl, ok := srv.Clients.Get("ferry-test")
		return ok && cl.State.Inflight.Len() == 0
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Over WebSocket (autopaho's connection, not ferry's reader) a message
// over MaxPayload is still dropped and counted, not stored.
func TestWebSocketOversizedIsDropped(t *testing.T) {
	srv, u := webSocketBroker(t)
	sink := newCommitterSink(t)
	in, done, cancel := startIngestWith(t, Config{URL: u, MaxPayload: 1 << 10}, sink, nil)
	defer cancel()
	const n = 20
	for i := range n {
		payload := []byte("x")
		if i%2 == 1 {
			payload = make([]byte, 4<<10) // over MaxPayload: read whole by WebSocket, dropped all the same
		}
		if err := srv.Publish("sensors/a", payload, false, 1); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the acknowledgements", func() bool { return in.Stats().Acknowledged == n })
	if st := in.Stats(); st.DroppedTooLarge != n/2 || st.Stored != n/2 {
		t.Fatalf("stats %+v: want %d dropped as too large, %d stored", st, n/2, n/2)
	}
	waitFor(t, 5*time.Second, "the broker to hold nothing in flight", func() bool {
		cl, ok := srv.Clients.Get("ferry-test")
		return ok && cl.State.Inflight.Len() == 0
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
