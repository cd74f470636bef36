package mqtt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-edge/ferry/internal/topic"
)

// QoS is an MQTT quality of service level.
type QoS byte

// The QoS levels.
const (
	AtMostOnce  QoS = 0 // QoS 0: the broker sends once and forgets
	AtLeastOnce QoS = 1 // QoS 1: PUBACK once durable
	ExactlyOnce QoS = 2 // QoS 2: PUBREC once durable, then PUBREL/PUBCOMP
)

// RetainHandling says when the broker sends the retained messages of a
// subscription's topics (MQTT 5.0 section 3.8.3.1). Its values are the
// protocol's.
type RetainHandling byte

// The retain handling options.
const (
	// RetainOnSubscribe: at every SUBSCRIBE. ferry subscribes again on
	// every connection, so each reconnect brings the retained messages
	// again.
	RetainOnSubscribe RetainHandling = 0
	// RetainIfNew: only when the subscription did not exist yet (ferry's
	// default): once for the life of the session.
	RetainIfNew RetainHandling = 1
	// RetainNever: never.
	RetainNever RetainHandling = 2
)

// Subscription is one topic filter ferry subscribes to, with its options.
type Subscription struct {
	// Filter is an MQTT topic filter, or a shared subscription
	// "$share/group/filter": the broker hands each message of filter to
	// one of the group's subscribers.
	Filter         string
	QoS            QoS
	NoLocal        bool // not the messages ferry's own client id publishes
	RetainAsPub    bool // keep the retain flag as published (else the broker clears it on forwarded messages)
	RetainHandling RetainHandling
}

// plainFilter is the filter topics are matched against: the filter of a
// shared subscription, else the filter itself.
func (s Subscription) plainFilter() string {
	_, f, _ := topic.SplitShared(s.Filter)
	return f
}

// subscriptionState is what the state file keeps: the filters the broker's
// session for ClientID may hold. The broker keeps a session's subscriptions
// (for up to the session expiry), whatever ferry's configuration says next
// time, so ferry must remember them to unsubscribe the ones it no longer
// wants.
type subscriptionState struct {
	Version  int      `json:"version"`
	ClientID string   `json:"client_id"`
	Broker   string   `json:"broker"` // the URL, without credentials: a record for another broker is another session's
	Filters  []string `json:"filters"`
}

const stateVersion = 1

// readState reads the filters recorded for clientID at broker in path.
// known is false when there is no usable record: no file (the first run,
// or a ferry from before the file existed), one for another client id or
// broker (another session), or one that does not parse (reported in err).
func readState(path, clientID, broker string) (filters []string, known bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read subscription state: %w", err)
	}
	var st subscriptionState
	if err := json.Unmarshal(data, &st); err != nil || st.Version != stateVersion {
		return nil, false, fmt.Errorf("subscription state %s is not a version %d record; ignored", path, stateVersion)
	}
	if st.ClientID != clientID || st.Broker != broker {
		return nil, false, nil
	}
	return st.Filters, true, nil
}

// writeState replaces the file at path with st, atomically and durably: a
// temporary file in the same directory, fsynced, renamed over path, and the
// directory fsynced, so that a crash leaves the old record or the new one.
func writeState(path string, st subscriptionState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write subscription state: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write subscription state %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return fmt.Errorf("write subscription state %s: sync directory: %w", path, err)
		}
	}
	return nil
}

// subscriptions is what ingest knows of its session's subscriptions. It is
// used by the subscriber goroutine only, apart from wanted and check, which
// are fixed before Run connects.
type subscriptions struct {
	wanted []Subscription
	plain  []string // wanted's plain filters, for matching topics
	// check: receive drops messages whose topic no wanted filter
	// matches. Always on: a broker sends only messages that match the
	// session's filters, so such a message came through a filter ferry
	// no longer wants, or one it never knew of (a session from before
	// the state file, a lost or moved record), which stays in the
	// session until unsubscribed.
	check bool
	// session is the filters the broker's session may hold, as recorded in
	// the state file; known is false when nothing was recorded.
	session []string
	known   bool
}

func newSubscriptions(wanted []Subscription) *subscriptions {
	s := &subscriptions{wanted: wanted}
	for _, w := range wanted {
		s.plain = append(s.plain, w.plainFilter())
	}
	return s
}

// matches reports whether a wanted filter matches topic.
func (s *subscriptions) matches(t string) bool {
	for _, f := range s.plain {
		if topic.MatchFilter(f, t) {
			return true
		}
	}
	return false
}

// removed returns the filters the session may hold that ferry no longer
// wants.
func (s *subscriptions) removed() []string {
	var r []string
	for _, f := range s.session {
		if !slices.ContainsFunc(s.wanted, func(w Subscription) bool { return w.Filter == f }) {
			r = append(r, f)
		}
	}
	return r
}

// loadState reads the state file, before Run connects.
func (in *Ingest) loadState() {
	subs := in.subs
	subs.check = true
	if in.cfg.StateFile == "" {
		return
	}
	filters, known, err := readState(in.cfg.StateFile, in.cfg.ClientID, in.cfg.URL.Redacted())
	if err != nil {
		in.log.Warn("cannot tell which filters the broker's session holds; filters removed from the configuration will not be unsubscribed", "err", err)
	}
	subs.session, subs.known = filters, known
	subs.check = true
	if !known && err == nil {
		in.log.Info("no record of earlier subscriptions for this client id; messages of filters not configured are dropped if the session brings any", "state_file", in.cfg.StateFile)
	}
}

// saveState records filters as what the session may hold.
func (in *Ingest) saveState(filters []string) {
	subs := in.subs
	if in.cfg.StateFile == "" || subs.known && slices.Equal(subs.session, filters) {
		return
	}
	st := subscriptionState{Version: stateVersion, ClientID: in.cfg.ClientID, Broker: in.cfg.URL.Redacted(), Filters: filters}
	if err := writeState(in.cfg.StateFile, st); err != nil {
		in.log.Error("cannot record the subscriptions; a filter removed from the configuration later may stay subscribed", "err", err)
		return
	}
	subs.session, subs.known = filters, true
}

// subscriber is the goroutine that (re)applies the subscriptions on every
// connection: up gets a value for each connection that comes up. A
// SUBSCRIBE or UNSUBSCRIBE that fails (no answer in time) is tried again
// on the same connection, after 1 s doubling up to 30 s: a connection that
// stays up must not stay without its subscriptions. It ends when ctx is
// done.
func (in *Ingest) subscriber(ctx context.Context, cm *autopaho.ConnectionManager, up <-chan struct{}) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	backoff := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-up:
			backoff = 0
		case <-retry.C:
		}
		retry.Stop()
		if in.applySubscriptions(ctx, cm) || ctx.Err() != nil {
			continue
		}
		backoff = min(max(2*backoff, time.Second), 30*time.Second)
		in.log.Warn("trying the subscriptions again", "in", backoff)
		retry.Reset(backoff)
	}
}

// applySubscriptions subscribes to every wanted filter (also when the
// broker resumed the session: it replaces each subscription with the
// configured options, and a resumed session may not hold them all), then
// unsubscribes the filters the session holds that ferry no longer wants.
// In that order, so no message of a filter both want is missed; a message
// published between the two may come twice (through the old filter and the
// new), never not at all. The state file records the union first and the
// wanted filters once the broker confirmed the unsubscription, so a crash
// in between leaves a record of every filter the session may hold.
func (in *Ingest) applySubscriptions(ctx context.Context, cm *autopaho.ConnectionManager) (done bool) {
	subs := in.subs
	removed := subs.removed()
	wanted := make([]string, 0, len(subs.wanted))
	for _, w := range subs.wanted {
		wanted = append(wanted, w.Filter)
	}
	in.saveState(append(slices.Clone(wanted), removed...))

	s := &paho.Subscribe{}
	for _, w := range subs.wanted {
		s.Subscriptions = append(s.Subscriptions, paho.SubscribeOptions{
			Topic: w.Filter, QoS: byte(w.QoS), NoLocal: w.NoLocal,
			RetainAsPublished: w.RetainAsPub, RetainHandling: byte(w.RetainHandling),
		})
	}
	octx, cancel := context.WithTimeout(ctx, in.cfg.ConnectTimeout)
	sa, err := cm.Subscribe(octx, s)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			in.log.Error("subscribe failed", "err", err)
		}
		return false
	}
	granted := true
	for i, code := range sa.Reasons {
		if i >= len(subs.wanted) {
			break
		}
		w := subs.wanted[i]
		switch {
		case code >= 0x80:
			granted = false
			in.log.Error("broker refused subscription", "filter", w.Filter, "reason_code", fmt.Sprintf("0x%02x", code), "reason", reasonName(code))
		case QoS(code) < w.QoS:
			in.log.Warn("broker granted a lower QoS than asked", "filter", w.Filter, "asked", w.QoS, "granted", code)
		default:
			in.log.Info("subscribed", "filter", w.Filter, "qos", code)
		}
	}

	if len(removed) > 0 {
		octx, cancel := context.WithTimeout(ctx, in.cfg.ConnectTimeout)
		ua, err := cm.Unsubscribe(octx, &paho.Unsubscribe{Topics: removed})
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				in.log.Error("unsubscribe failed", "filters", removed, "err", err)
			}
			in.subscribed.Store(granted) // the wanted filters are in place
			return false
		}
		left := slices.Clone(wanted)
		for i, f := range removed {
			code := byte(0x80)
			if i < len(ua.Reasons) {
				code = ua.Reasons[i]
			}
			// 0x11: the session held no such subscription.
			if code == 0x00 || code == 0x11 {
				in.log.Info("unsubscribed a filter removed from the configuration", "filter", f)
				continue
			}
			left = append(left, f)
			in.log.Error("broker refused to unsubscribe a filter removed from the configuration; its messages are dropped", "filter", f, "reason_code", fmt.Sprintf("0x%02x", code), "reason", reasonName(code))
		}
		in.saveState(left)
	}
	in.subscribed.Store(granted)
	return true
}

// reasonName names an MQTT 5 reason code of a CONNACK, SUBACK or UNSUBACK.
func reasonName(code byte) string {
	switch code {
	case 0x00:
		return "success"
	case 0x11:
		return "no subscription existed"
	case 0x80:
		return "unspecified error"
	case 0x81:
		return "malformed packet"
	case 0x82:
		return "protocol error"
	case 0x83:
		return "implementation specific error"
	case 0x84:
		return "unsupported protocol version"
	case 0x85:
		return "client identifier not valid"
	case 0x86:
		return "bad user name or password"
	case 0x87:
		return "not authorized"
	case 0x88:
		return "server unavailable"
	case 0x89:
		return "server busy"
	case 0x8a:
		return "banned"
	case 0x8c:
		return "bad authentication method"
	case 0x8f:
		return "topic filter invalid"
	case 0x91:
		return "packet identifier in use"
	case 0x95:
		return "packet too large"
	case 0x97:
		return "quota exceeded"
	case 0x9e:
		return "shared subscriptions not supported"
	case 0x9f:
		return "connection rate exceeded"
	case 0xa1:
		return "subscription identifiers not supported"
	case 0xa2:
		return "wildcard subscriptions not supported"
	}
	return "unknown"
}

// connackWarnings lists what the broker's CONNACK grants below the
// configuration. The CONNACK's Receive Maximum is not among them: it
// bounds what ferry would publish to the broker, not what the broker sends
// ferry (ferry's own Receive Maximum, in CONNECT, bounds that).
func (in *Ingest) connackWarnings(ca *paho.Connack) []string {
	p := ca.Properties
	if p == nil {
		return nil
	}
	var w []string
	if p.SessionExpiryInterval != nil {
		if got := time.Duration(*p.SessionExpiryInterval) * time.Second; got < in.cfg.SessionExpiry {
			w = append(w, fmt.Sprintf("the broker keeps ferry's session for %v after a disconnect, not the %v configured (mqtt.session_expiry): messages published while ferry is away longer are lost", got, in.cfg.SessionExpiry))
		}
	}
	if p.MaximumQoS != nil {
		for _, s := range in.cfg.Subscriptions {
			if s.QoS > QoS(*p.MaximumQoS) {
				w = append(w, fmt.Sprintf("the broker supports QoS %d at most; subscription %q asks for %d and gets %d", *p.MaximumQoS, s.Filter, s.QoS, *p.MaximumQoS))
			}
		}
	}
	if !p.SharedSubAvailable {
		for _, s := range in.cfg.Subscriptions {
			if _, _, shared := topic.SplitShared(s.Filter); shared {
				w = append(w, fmt.Sprintf("the broker does not support shared subscriptions; %q will be refused", s.Filter))
			}
		}
	}
	return w
}
