package mqtt

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/log"
)

// pinger is ingest's MQTT keep-alive (paho's Pinger). It sends PINGREQ as
// paho's DefaultPinger does: when nothing was both sent and received for
// the keep-alive interval. Unlike it, it does not take a late PINGRESP for
// a dead broker while ferry itself is not reading: when the sink is slow
// (a long commit, a full buffer with when_full: block) ferry's reader waits
// to hand a message on (paho's, or bufConn handing one to ingest), the
// socket fills, the broker stops sending (TCP
// backpressure: the publishers feel it through the broker), and the
// PINGRESP waits behind the unread messages. The connection is dead only
// if ferry has been waiting for the broker since before the PINGREQ went
// out and nothing came. PINGREQs keep going out meanwhile, so the broker,
// which judges ferry by what it receives, keeps the connection too.
//
// paho makes one Client per connection from one ClientConfig, so one
// pinger serves them all, one Run at a time.
type pinger struct {
	// writes are the PINGREQ writes under way, each on a goroutine of its
	// own (a write may take long on a slow link): closing the connection
	// ends them, and ingest's Run waits for them (wait) once paho has.
	writes sync.WaitGroup

	mu       sync.Mutex
	sent     time.Time // last packet sent
	received time.Time // last packet received
	pingResp time.Time // last PINGRESP
}

var _ paho.Pinger = (*pinger)(nil)

// readWaiter is a connection that tells whether its reader waits for the
// network, and since when (bufConn).
type readWaiter interface {
	waitingSince() (time.Time, bool)
}

func (p *pinger) Run(ctx context.Context, conn net.Conn, keepAlive uint16) error {
	if keepAlive == 0 {
		return nil
	}
	if conn == nil {
		return errors.New("pinger: no connection")
	}
	rw, _ := conn.(readWaiter)
	interval := time.Duration(keepAlive) * time.Second
	timer := time.NewTimer(0) // the first PINGREQ at once, as paho's
	defer timer.Stop()
	var lastPing time.Time
	errs := make(chan error, 1)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return err
		case now := <-timer.C:
			p.mu.Lock()
			sent, received, resp := p.sent, p.received, p.pingResp
			p.mu.Unlock()
			// No PINGRESP for a whole interval: dead, unless ferry is not
			// reading (then the PINGRESP waits in the socket).
			overdue := !lastPing.IsZero() && lastPing.After(resp) && now.Sub(lastPing) >= interval
			if overdue {
				since, waiting := time.Time{}, true
				if rw != nil {
					since, waiting = rw.waitingSince()
				}
				if waiting && since.Before(lastPing) && received.Before(lastPing) {
					return errors.New("PINGRESP timed out")
				}
			}
			due := sent
			if received.Before(due) {
				due = received
			}
			if due = due.Add(interval); !overdue && now.Before(due) {
				timer.Reset(due.Sub(now))
				continue
			}
			lastPing = now
			p.writes.Add(1)
			go func() {
				defer p.writes.Done()
				// A write may take long on a slow link; closing the
				// connection ends it.
				if _, err := packets.NewControlPacket(packets.PINGREQ).WriteTo(conn); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}()
			timer.Reset(interval)
		}
	}
}

func (p *pinger) PacketSent() {
	p.mu.Lock()
	p.sent = time.Now()
	p.mu.Unlock()
}

func (p *pinger) PacketReceived() {
	p.mu.Lock()
	p.received = time.Now()
	p.mu.Unlock()
}

func (p *pinger) PingResp() {
	p.mu.Lock()
	p.pingResp = time.Now()
	p.mu.Unlock()
}

func (p *pinger) SetDebug(log.Logger) {}

// wait waits up to d for the PINGREQ writes under way to end, and reports
// whether they did.
func (p *pinger) wait(d time.Duration) bool {
	done := make(chan struct{})
	go func() { p.writes.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}
