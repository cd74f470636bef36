package mqtt

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
)

// Reconnection delays. A broker that is restarting or unreachable is tried
// again soon and then less often, so that ferry is back within about a
// second of a broker restart; a broker that refuses ferry (credentials,
// authorization, a certificate either side rejects) is tried again far less
// often: trying harder will not help, and each attempt costs the broker a
// handshake and a log line.
const (
	retryFirst      = 200 * time.Millisecond
	retryMax        = 5 * time.Second
	refusedFirst    = time.Second
	refusedMax      = time.Minute
	shortConnection = 10 * time.Second // a connection that lived less counts as a failed attempt
)

// backoff is autopaho's ReconnectBackoff, told by ingest what the last
// attempt ended with. autopaho counts attempts from 0 again after each
// connection; backoff keeps counting across connections that lasted less
// than shortConnection (a broker that accepts and then drops ferry, or a
// second ferry with the same client id taking the session over each time),
// so a reconnect never becomes a tight loop.
type backoff struct {
	mu       sync.Mutex
	refused  bool      // the last attempt was refused, not merely failed
	failures int       // attempts that failed in a row, short connections included
	upSince  time.Time // when the connection up now came up; zero while down
}

// delay is autopaho's ReconnectBackoff: how long to wait before attempt
// (0 for the first after a connection went down).
func (b *backoff) delay(attempt int) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.failures
	if n == 0 {
		return 0
	}
	first, most := retryFirst, retryMax
	if b.refused {
		first, most = refusedFirst, refusedMax
	}
	d := first
	for i := 1; i < n && d < most; i++ {
		d = d * 3 / 2
	}
	d = min(d, most)
	// Jitter: from half to all of d, so that gateways restarted together
	// by a broker restart do not come back in step.
	return d/2 + rand.N(d/2+1)
}

// failed records a failed connection attempt.
func (b *backoff) failed(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures++
	// Once refused, a streak of failures stays refused: what follows a
	// refusal (the broker resetting the next attempts) is no reason to
	// try harder.
	b.refused = b.refused || isRefusal(err)
}

// up records a connection that came up.
func (b *backoff) up() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.upSince = time.Now()
}

// down records that the connection went down: a short-lived one counts as
// a failure, a long one starts the count again.
func (b *backoff) down() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if time.Since(b.upSince) < shortConnection {
		b.failures++
	} else {
		b.failures, b.refused = 0, false
	}
	b.upSince = time.Time{}
}

// isRefusal reports whether err is the broker refusing ferry (a CONNACK
// with an error reason code) or a TLS handshake that failed on a
// certificate, ferry's or the broker's: errors a retry soon will not fix.
func isRefusal(err error) bool {
	var (
		ca      *autopaho.ConnackError
		unknown x509.UnknownAuthorityError
		invalid x509.CertificateInvalidError
		host    x509.HostnameError
		verify  *tls.CertificateVerificationError
		alert   tls.AlertError
	)
	return errors.Is(err, errNoClientCertificate) || errors.As(err, &ca) || errors.As(err, &unknown) || errors.As(err, &invalid) ||
		errors.As(err, &host) || errors.As(err, &verify) || errors.As(err, &alert)
}
