package mqtt

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho/session/state"
)

// session is paho's session state (state.State, in memory) with the
// acknowledgement of received messages taken over by ingest. paho calls
// Ack as soon as the handler returns, which is before the record is
// durable; session ignores that, and ingest acknowledges later, from its
// ack goroutine, on the connection the message came on (see link).
//
// Doing this instead of paho's manual acknowledgements spares a 10ms
// ticker (paho's ack sender, which costs more than the rest of an idle
// ferry) and lets ingest write a batch of PUBACKs in one call.
type session struct {
	*state.State

	mu  sync.Mutex            // orders connection changes with PUBRECs
	cur atomic.Pointer[link]  // the connection up now; nil while there is none
	fwd chan *packets.Publish // what paho's session passes on (see PacketReceived)
}

func newSession() *session {
	return &session{State: state.NewInMemory(), fwd: make(chan *packets.Publish, 1)}
}

// PacketReceived is paho's, on its reading goroutine, with one thing
// added: a PUBLISH that paho's session does not pass on to the router (a
// QoS 2 message it had received already and answers itself, one with
// packet identifier 0) is counted off bufConn's passed, as onPublish
// counts off those it gets, so that bufConn goes on reading messages
// itself.
func (s *session) PacketReceived(recv *packets.ControlPacket, pubChan chan<- *packets.Publish) error {
	if _, ok := recv.Content.(*packets.Publish); !ok {
		return s.State.PacketReceived(recv, pubChan)
	}
	err := s.State.PacketReceived(recv, s.fwd)
	select {
	case p := <-s.fwd:
		pubChan <- p // as paho's session sends it
	default:
		if l := s.cur.Load(); l != nil {
			if c, ok := l.w.(*bufConn); ok {
				c.passed.Add(-1)
			}
		}
	}
	return err
}

// errLinkGone means the connection a message came on is gone: its
// acknowledgement is not sent, and the broker delivers the message again.
var errLinkGone = errors.New("connection gone")

// ConAckReceived is called by paho once a connection is up, before it
// reads any message from it.
func (s *session) ConAckReceived(w io.Writer, cp *packets.Connect, ca *packets.Connack) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.State.ConAckReceived(w, cp, ca); err != nil {
		return err
	}
	s.cur.Store(&link{w: w})
	return nil
}

// ConnectionLost is called by paho when the connection went down or the
// broker sent DISCONNECT.
func (s *session) ConnectionLost(dp *packets.Disconnect) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur.Store(nil)
	return s.State.ConnectionLost(dp)
}

// Ack does nothing: ingest acknowledges a message once it is durable.
func (s *session) Ack(*packets.Publish) error { return nil }

// current returns the connection up now, nil if there is none. paho hands
// messages to ingest only from the connection up now: autopaho does not
// connect again before the client of the last connection has stopped.
func (s *session) current() *link { return s.cur.Load() }

// pubrec acknowledges a QoS 2 message that came on l with PUBREC, through
// paho's session, which records it so that it answers the broker's PUBREL
// and recognizes the message if it comes again.
func (s *session) pubrec(l *link, id uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.Load() != l {
		return errLinkGone
	}
	return s.State.Ack(&packets.Publish{PacketID: id, QoS: 2})
}

// setWriteDeadline sets the write deadline of the connection up now, if
// there is one: a write stuck on a connection that takes nothing fails at
// t.
func (s *session) setWriteDeadline(t time.Time) {
	if l := s.cur.Load(); l != nil {
		if c, ok := l.w.(interface{ SetWriteDeadline(time.Time) error }); ok {
			_ = c.SetWriteDeadline(t)
		}
	}
}

// link is one connection to the broker as ingest's acknowledgements see
// it. A message is acknowledged on the connection it came on or not at all:
// after a reconnect the broker delivers the unacknowledged messages again
// and, once they are acknowledged, gives their packet identifiers to other
// messages, so an acknowledgement late on a new connection could
// acknowledge a message that is not durable yet.
type link struct {
	w io.Writer // *bufConn, or autopaho's WebSocket connection
}

// write writes packets, whole, in one call, holding the connection's
// packet lock as paho does.
func (l *link) write(b []byte) error {
	if lk, ok := l.w.(sync.Locker); ok {
		lk.Lock()
		defer lk.Unlock()
	}
	_, err := l.w.Write(b)
	return err
}

// appendPuback appends a PUBACK for packet id, success, written as paho
// writes it: reason code 0 and an empty property list.
func appendPuback(b []byte, id uint16) []byte {
	return append(b, packets.PUBACK<<4, 4, byte(id>>8), byte(id), 0, 0)
}
