package forward

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// ferry dials Kafka itself (dial): TLS checks the broker's certificate
// against the broker's host when the configuration names no server, and
// SASL and the status client work over it.
func TestKafkaOverTLSAndSASL(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ips   []net.IP
		names []string
		ok    bool
	}{
		{"certificate for 127.0.0.1", []net.IP{net.ParseIP("127.0.0.1")}, nil, true},
		{"certificate for another name", nil, []string{"elsewhere.example"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert, pool := testenv.SelfSignedCert(t, tc.ips, tc.names)
			c := newClusterWith(t, 1, []kfake.Opt{
				kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}}),
				kfake.EnableSASL(), kfake.Superuser("PLAIN", "gw", "secret"),
			}, "t", "status")
			b := newBuffer(t)
			f, err := New(Config{
				Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/{device}", "t", "{device}")}, StatusTopic: "status",
				TLS: &tls.Config{RootCAs: pool}, SASL: plain.Auth{User: "gw", Pass: "secret"}.AsMechanism(),
			}, b)
			if err != nil {
				t.Fatal(err)
			}
			defer run(t, f)()
			appendN(t, b, "s/dev", 10)
			if tc.ok {
				waitFor(t, "10 records delivered over TLS", func() bool { return f.Stats().Delivered == 10 })
				// The status client, dialled the same way, sent one at start.
				cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("status"),
					kgo.DialTLSConfig(&tls.Config{RootCAs: pool}), kgo.SASL(plain.Auth{User: "gw", Pass: "secret"}.AsMechanism()))
				if err != nil {
					t.Fatal(err)
				}
				defer cl.Close()
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				defer cancel()
				fs := cl.PollRecords(ctx, 1)
				if err := fs.Err0(); err != nil || fs.NumRecords() == 0 {
					t.Fatalf("no status record over TLS: %v", err)
				}
				return
			}
			waitFor(t, "a connection error", func() bool { return f.Stats().LastError != "" })
			if e := f.Stats().LastError; !strings.Contains(e, "certificate") {
				t.Errorf("error %q does not name the certificate", e)
			}
			if d := f.Stats().Delivered; d != 0 {
				t.Errorf("%d records delivered to a broker whose certificate does not match", d)
			}
		})
	}
}

// DialTimeout covers the TLS handshake: a broker that accepts the
// connection and says nothing is reported, not waited for.
func TestDialTimeoutCoversTheHandshake(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var silent []net.Conn
		defer func() {
			for _, c := range silent {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			silent = append(silent, c)
		}
	}()
	b := newBuffer(t)
	f, err := New(Config{
		Brokers: []string{ln.Addr().String()}, Routes: []Route{route(t, "s/{device}", "t", "{device}")},
		TLS: &tls.Config{}, DialTimeout: 300 * time.Millisecond,
	}, b)
	if err != nil {
		t.Fatal(err)
	}
	defer run(t, f)()
	appendN(t, b, "s/dev", 1)
	waitFor(t, "the handshake's timeout reported", func() bool { return f.Stats().LastError != "" })
	if e := f.Stats().LastError; !strings.Contains(e, "deadline exceeded") {
		t.Errorf("error %q: want the dial's deadline", e)
	}
}
