package mqtt

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// A TLS front end that requests but does not require a client certificate
// (HiveMQ's OPTIONAL, EMQX's verify_peer without fail_if_no_peer_cert):
// ferry, with none, connects.
func TestOptionalClientCertificateIsServed(t *testing.T) {
	broker := testenv.NewBroker(t)
	ca := newTestCA(t)
	_, _, serverPair := ca.issue(t, "broker", true)
	addr := tlsProxyWith(t, broker.Addr, &tls.Config{Certificates: []tls.Certificate{serverPair}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: ca.pool})
	u, _ := url.Parse("mqtts://" + addr)
	var log logBuffer
	in, err := New(Config{URL: u, ClientID: "ferry-test", TLS: &tls.Config{RootCAs: ca.pool},
		Logger: slog.New(slog.NewTextHandler(&log, nil)), Subscriptions: []Subscription{{Filter: "sensors/#", QoS: 1}}}, &topicSink{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for !in.Stats().Subscribed && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !in.Stats().Subscribed {
		t.Errorf("not connected to a broker that only offers client auth:\n%s", log.String())
	}
	stop()
	<-done
}
