package mqtt

import (
	"sync"
	"time"
)

// ConnState is what ingest's connection to the broker is doing.
type ConnState uint8

const (
	// StateConnecting: not connected, and no attempt failed since the
	// start or since the connection went down.
	StateConnecting ConnState = iota
	// StateConnected: the connection is up (Stats.Subscribed says
	// whether the broker granted the subscriptions on it yet).
	StateConnected
	// StateUnreachable: not connected; the last attempt failed on the
	// way (network, timeout, the broker closing it). Ingest retries with
	// backoff.
	StateUnreachable
	// StateRefused: not connected; the broker refused ferry (a CONNACK
	// reason code such as bad credentials or not authorized, or a
	// certificate either side rejects). Ingest retries, far less often.
	StateRefused
	// StateStopped: Run returned.
	StateStopped
)

func (s ConnState) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateUnreachable:
		return "unreachable"
	case StateRefused:
		return "refused"
	case StateStopped:
		return "stopped"
	}
	return "unknown"
}

// connState is the connection's state for Stats: what it is, since when
// and the last error.
type connState struct {
	mu    sync.Mutex
	state ConnState
	since time.Time // when it came up or went down (or New made it, or Run ended)
	err   string    // the last error since the connection was last up
}

// set puts the connection in state s; err, if not empty, is why. Since
// moves when the connection comes up or goes down (or stops), not between
// the states of a connection that is down, so it says how long ferry has
// had no connection.
func (c *connState) set(s ConnState, err string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.since.IsZero() || (c.state == StateConnected) != (s == StateConnected) || s == StateStopped {
		c.since = time.Now()
	}
	c.state = s
	if s == StateConnected {
		c.err = ""
	} else if err != "" {
		c.err = err
	}
}

// lost notes that the connection went down; the error that took it down,
// if ingest heard one, stays its LastError.
func (c *connState) lost() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == StateConnected {
		c.since = time.Now()
	}
	c.state = StateConnecting
	if c.err == "" {
		c.err = "connection to the broker lost"
	}
}

// failed notes err on the connection without changing its state (the
// connection broke, or the broker closed it; the state follows).
func (c *connState) failed(err string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
}

// load returns the state, since when and the last error.
func (c *connState) load() (ConnState, time.Time, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state, c.since, c.err
}
