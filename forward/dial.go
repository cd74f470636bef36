package forward

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"github.com/ferry-edge/ferry/internal/rawsock"
)

// dial connects both clients to a broker as franz-go's own dialer would
// (DialTimeout over the connect and the TLS handshake, the server name
// from the broker's host unless the TLS configuration names one), but on a
// connection whose reads and writes are raw system calls (internal/rawsock):
// at 1,000 msg/s that took ferry from 8.6-9.8 to 6.35-6.65 CPU-s per 100k
// messages, most of the difference the runtime's monitor thread
// (ferry-bench -rate 1000).
func (f *Forwarder) dial(ctx context.Context, network, host string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.DialTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, network, host)
	if err != nil {
		return nil, err
	}
	if f.cfg.TLS == nil {
		return rawsock.Wrap(c), nil
	}
	cfg := f.cfg.TLS.Clone()
	if cfg.ServerName == "" {
		if cfg.ServerName, _, err = net.SplitHostPort(host); err != nil {
			c.Close()
			return nil, fmt.Errorf("unable to split host:port for dialing: %w", err)
		}
	}
	tc := tls.Client(rawsock.Wrap(c), cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}
