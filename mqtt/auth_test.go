package mqtt

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// testCA is a certificate authority a test makes, with the certificates
// it signs written as PEM files.
type testCA struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	file string // the CA certificate, PEM
	n    int64
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	ca := &testCA{dir: t.TempDir()}
	ca.cert, ca.key = ca.sign(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "ferry test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	})
	ca.pool = x509.NewCertPool()
	ca.pool.AddCert(ca.cert)
	ca.file = ca.write(t, "ca.pem", "CERTIFICATE", ca.cert.Raw)
	return ca
}

// sign makes a key and signs tmpl with the CA (itself while it has none).
func (ca *testCA) sign(t *testing.T, tmpl *x509.Certificate) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca.n++
	tmpl.SerialNumber = big.NewInt(ca.n)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	parent, signer := tmpl, key
	if ca.cert != nil {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func (ca *testCA) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(ca.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue signs a certificate for a server (127.0.0.1) or a client and
// writes it and its key as name.pem and name.key.
func (ca *testCA) issue(t *testing.T, name string, server bool) (certFile, keyFile string, pair tls.Certificate) {
	t.Helper()
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: name}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.DNSNames = []string{"broker.test"}
	}
	cert, key := ca.sign(t, tmpl)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = ca.write(t, name+".pem", "CERTIFICATE", cert.Raw)
	keyFile = ca.write(t, name+".key", "EC PRIVATE KEY", keyDER)
	pair, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pair
}

// logBuffer collects an ingest's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// countingDialer counts ingest's connection attempts.
type countingDialer struct{ n atomic.Int32 }

func (d *countingDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.n.Add(1)
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

// refusedFor runs an ingest of cfg that the broker refuses for 3.5 s and
// returns its log and how many times it tried to connect; it checks that
// Stats said so meanwhile.
func refusedFor(t *testing.T, cfg Config) (string, int) {
	t.Helper()
	var log logBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&log, nil))
	cfg.ClientID = "ferry-test"
	cfg.Subscriptions = []Subscription{{Filter: "sensors/#", QoS: 1}}
	start := time.Now()
	in, err := New(cfg, &topicSink{})
	if err != nil {
		t.Fatal(err)
	}
	var d countingDialer
	in.dial = d.dial
	ctx, cancel := context.WithTimeout(context.Background(), 3500*time.Millisecond)
	defer cancel()
	seenc := make(chan Stats, 1)
	go func() {
		time.Sleep(3 * time.Second)
		seenc <- in.Stats()
	}()
	if err := in.Run(ctx); err != nil {
		t.Fatal(err)
	}
	seen := <-seenc
	if seen.State != StateRefused || !strings.Contains(seen.LastError, "refused") && !strings.Contains(seen.LastError, "certificate") ||
		seen.Since.Before(start) || seen.Since.After(start.Add(time.Second)) {
		t.Errorf("while refused: state %v since %v (started %v), last error %q; want refused since the start, and why",
			seen.State, seen.Since, start, seen.LastError)
	}
	if in.Stats().Received != 0 {
		t.Fatal("a refused ingest received messages")
	}
	return log.String(), int(d.n.Load())
}

// Mutual TLS against Mosquitto with a CA and certificates the test makes:
// with its client certificate ferry connects and stores; without one the
// broker refuses the handshake, which ferry logs and retries with a backoff
// of a second or more, not in a tight loop.
func TestMutualTLSWithMosquitto(t *testing.T) {
	ca := newTestCA(t)
	srvCert, srvKey, _ := ca.issue(t, "broker", true)
	_, _, client := ca.issue(t, "ferry", false)
	broker := testenv.NewMosquitto(t, testenv.MosquittoOptions{TLS: &testenv.MosquittoTLS{
		CAFile: ca.file, CertFile: srvCert, KeyFile: srvKey, RequireCertificate: true,
	}}, "the test configures Mosquitto's TLS listener")
	u, _ := url.Parse("mqtts://" + broker.TLSAddr)

	t.Run("with a client certificate", func(t *testing.T) {
		tc := &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{client}}
		sink := &topicSink{}
		_, done, cancel := startIngestWith(t, Config{URL: u, TLS: tc}, sink, nil)
		defer cancel()
		publish(t, publisher(t, broker.Addr), "sensors/a", 1, "over mTLS")
		waitFor(t, 10*time.Second, "the message", func() bool { return sink.count("sensors/a") == 1 })
		stopIngest(t, done, cancel)
	})
	t.Run("server name from the config", func(t *testing.T) {
		// The certificate names broker.test: dialling 127.0.0.1 with that
		// server name verifies.
		tc := &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{client}, ServerName: "broker.test"}
		_, done, cancel := startIngestWith(t, Config{URL: u, TLS: tc}, &topicSink{}, nil)
		stopIngest(t, done, cancel)
	})
	t.Run("without a client certificate", func(t *testing.T) {
		log, attempts := refusedFor(t, Config{URL: u, TLS: &tls.Config{RootCAs: ca.pool}})
		if !strings.Contains(log, "cannot connect to broker") || !strings.Contains(log, "certificate") {
			t.Errorf("log does not say the certificate was refused:\n%s", log)
		}
		if attempts > 4 {
			t.Errorf("%d connection attempts in 3.5s, want a backoff of a second or more", attempts)
		}
	})
	t.Run("broker not trusted", func(t *testing.T) {
		other := newTestCA(t)
		log, attempts := refusedFor(t, Config{URL: u, TLS: &tls.Config{RootCAs: other.pool, Certificates: []tls.Certificate{client}}})
		if !strings.Contains(log, "certificate signed by unknown authority") {
			t.Errorf("log does not say the broker's certificate is not trusted:\n%s", log)
		}
		if attempts > 4 {
			t.Errorf("%d connection attempts in 3.5s, want a backoff of a second or more", attempts)
		}
	})
}

// A user name and password the broker knows log in; a wrong password is a
// clear error in the log (never the password itself), retried with a
// backoff, not in a tight loop.
func TestPasswordWithMosquitto(t *testing.T) {
	const good, bad = "c0rrect-Horse", "wr0ng-Battery"
	broker := testenv.NewMosquitto(t, testenv.MosquittoOptions{Users: map[string]string{"ferry": good}},
		"the test configures Mosquitto's password file")
	u, _ := url.Parse(broker.URL())

	sink := &topicSink{}
	_, done, cancel := startIngestWith(t, Config{URL: u, Username: "ferry", Password: []byte(good)}, sink, nil)
	defer cancel()
	pub := publisherAs(t, broker.Addr, "ferry", good)
	publish(t, pub, "sensors/a", 1, "logged in")
	waitFor(t, 10*time.Second, "the message", func() bool { return sink.count("sensors/a") == 1 })
	stopIngest(t, done, cancel)

	log, attempts := refusedFor(t, Config{URL: u, Username: "ferry", Password: []byte(bad)})
	if !strings.Contains(log, "the broker refused the connection: bad user name or password (reason code 0x86)") &&
		!strings.Contains(log, "the broker refused the connection: not authorized (reason code 0x87)") {
		t.Errorf("log does not say the password was refused:\n%s", log)
	}
	if strings.Contains(log, bad) || strings.Contains(log, good) {
		t.Errorf("a password is in the log:\n%s", log)
	}
	if attempts > 4 {
		t.Errorf("%d connection attempts in 3.5s, want a backoff of a second or more", attempts)
	}
}
