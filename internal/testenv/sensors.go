package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// Message is the JSON payload a simulated sensor publishes.
type Message struct {
	Device string `json:"device"`
	Seq    int    `json:"seq"`
	SentAt int64  `json:"sent_at_unix_nano"`
}

// payloadSize is the approximate size of an encoded message.
const payloadSize = 200

// wireMessage is Message plus filler that brings the payload to about
// payloadSize bytes, like a real sensor reading.
type wireMessage struct {
	Message
	Pad string `json:"pad,omitempty"`
}

// EncodeMessage returns m as JSON padded to about 200 bytes.
func EncodeMessage(m Message) []byte {
	b, _ := json.Marshal(wireMessage{Message: m})
	if n := payloadSize - len(b) - len(`,"pad":""`); n > 0 {
		b, _ = json.Marshal(wireMessage{Message: m, Pad: strings.Repeat("x", n)})
	}
	return b
}

// DecodeMessage parses a payload written by EncodeMessage.
func DecodeMessage(b []byte) (Message, error) {
	var w wireMessage
	if err := json.Unmarshal(b, &w); err != nil {
		return Message{}, fmt.Errorf("decode sensor message: %w", err)
	}
	if w.Device == "" {
		return Message{}, errors.New("decode sensor message: no device")
	}
	return w.Message, nil
}

// DeviceName returns the name of device i: "dev-00", "dev-01", ...
func DeviceName(i int) string { return fmt.Sprintf("dev-%02d", i) }

// SensorsConfig configures simulated sensors.
type SensorsConfig struct {
	// BrokerURL is the MQTT broker, "tcp://host:port". Required.
	BrokerURL string
	// Devices is the number of devices, each with its own MQTT client.
	// Required, at least 1.
	Devices int
	// PerDevice is the number of messages each device publishes, with
	// seq 0..PerDevice-1. Required, at least 1.
	PerDevice int
	// Interval is the pause between two messages of one device. Default 0,
	// as fast as the broker acknowledges.
	Interval time.Duration
	// QoS of the publishes, 0 to 2. The zero value is QoS 0, which has no
	// acknowledgement: a message then counts as acked once written to the
	// connection. Use 1 for no-loss tests.
	QoS byte
	// TopicFormat is a fmt format with one %s for the device name. Default
	// "sensors/%s/telemetry".
	TopicFormat string
	// ClientPrefix is prepended to the device name to form the client id.
	// Default "sensor-".
	ClientPrefix string
	// FirstDevice numbers the devices: they are DeviceName(FirstDevice)
	// to DeviceName(FirstDevice+Devices-1). Default 0. Sensors started one
	// after another with disjoint ranges publish distinct messages, and
	// their results can be merged (SensorsResult.Merge).
	FirstDevice int
}

func (c *SensorsConfig) defaultsAndValidate() error {
	if c.TopicFormat == "" {
		c.TopicFormat = "sensors/%s/telemetry"
	}
	if c.ClientPrefix == "" {
		c.ClientPrefix = "sensor-"
	}
	switch {
	case c.BrokerURL == "":
		return errors.New("sensors: BrokerURL is empty")
	case c.Devices < 1:
		return fmt.Errorf("sensors: Devices is %d, must be at least 1", c.Devices)
	case c.PerDevice < 1:
		return fmt.Errorf("sensors: PerDevice is %d, must be at least 1", c.PerDevice)
	case c.QoS > 2:
		return fmt.Errorf("sensors: QoS is %d, must be 0, 1 or 2", c.QoS)
	case c.FirstDevice < 0:
		return fmt.Errorf("sensors: FirstDevice is %d, must not be negative", c.FirstDevice)
	case c.Interval < 0:
		return fmt.Errorf("sensors: Interval is %v, must not be negative", c.Interval)
	case strings.Count(c.TopicFormat, "%s") != 1:
		return fmt.Errorf("sensors: TopicFormat %q must contain %%s exactly once", c.TopicFormat)
	}
	if _, err := brokerAddr(c.BrokerURL); err != nil {
		return err
	}
	return nil
}

// brokerAddr turns "tcp://host:port" (or "mqtt://", or a bare host:port)
// into host:port.
func brokerAddr(raw string) (string, error) {
	if !strings.Contains(raw, "://") {
		return raw, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("sensors: BrokerURL %q: %w", raw, err)
	}
	if u.Scheme != "tcp" && u.Scheme != "mqtt" {
		return "", fmt.Errorf("sensors: BrokerURL %q: scheme must be tcp or mqtt", raw)
	}
	return u.Host, nil
}

// SensorsResult is what the sensors got acknowledged.
type SensorsResult struct {
	// Acked maps each device to the number of its messages the broker
	// acknowledged; messages with seq < Acked[device] are acknowledged.
	Acked map[string]int
	// Reconnects counts connections made after a device's first one.
	Reconnects int
	// Elapsed is the time from start to the last device finishing.
	Elapsed time.Duration
}

// Merge adds other's devices to r: the result of sensors with other
// devices (see SensorsConfig.FirstDevice). A device in both keeps the
// larger count.
func (r *SensorsResult) Merge(other *SensorsResult) {
	if r.Acked == nil {
		r.Acked = map[string]int{}
	}
	for dev, n := range other.Acked {
		r.Acked[dev] = max(r.Acked[dev], n)
	}
	r.Reconnects += other.Reconnects
	r.Elapsed = max(r.Elapsed, other.Elapsed)
}

// Total returns the number of acknowledged messages over all devices.
func (r *SensorsResult) Total() int {
	n := 0
	for _, a := range r.Acked {
		n += a
	}
	return n
}

// Sensors is a running set of simulated devices; see StartSensors.
type Sensors struct {
	cfg        SensorsConfig
	start      time.Time
	sent       atomic.Int64
	reconnects atomic.Int64
	acked      []atomic.Int64 // per device
	done       chan struct{}
	res        *SensorsResult
	err        error
}

// RunSensors publishes as StartSensors does and waits for the result.
func RunSensors(ctx context.Context, cfg SensorsConfig) (*SensorsResult, error) {
	return StartSensors(ctx, cfg).Wait()
}

// StartSensors starts one MQTT v5 client per device. Device i is named
// DeviceName(FirstDevice+i), connects as ClientPrefix+name with a clean
// session and publishes PerDevice messages with seq 0, 1, ... to its topic,
// one at a time, each after the previous one was acknowledged. When a publish fails
// or the connection drops, the device reconnects with capped backoff and
// publishes the unacknowledged message again, so the broker may see
// duplicates but never a gap. Sensors stop when all messages are
// acknowledged or ctx is done. Configuration errors are returned by Wait.
func StartSensors(ctx context.Context, cfg SensorsConfig) *Sensors {
	s := &Sensors{cfg: cfg, start: time.Now(), done: make(chan struct{})}
	if err := s.cfg.defaultsAndValidate(); err != nil {
		s.res, s.err = &SensorsResult{Acked: map[string]int{}}, err
		close(s.done)
		return s
	}
	s.acked = make([]atomic.Int64, s.cfg.Devices)
	var wg sync.WaitGroup
	for i := range s.cfg.Devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.runDevice(ctx, i)
		}()
	}
	go func() {
		wg.Wait()
		s.res = s.snapshot()
		if s.res.Total() < s.cfg.Devices*s.cfg.PerDevice {
			s.err = fmt.Errorf("sensors stopped after %d of %d messages: %w",
				s.res.Total(), s.cfg.Devices*s.cfg.PerDevice, context.Cause(ctx))
		}
		close(s.done)
	}()
	return s
}

// Sent returns how many messages have been acknowledged so far, over all
// devices. It is safe to call while the sensors run.
func (s *Sensors) Sent() int64 { return s.sent.Load() }

// Done is closed when all devices have stopped.
func (s *Sensors) Done() <-chan struct{} { return s.done }

// Wait waits for all devices to stop. The result is never nil: when ctx
// ended early, it holds what was acknowledged until then and the error is
// the context's.
func (s *Sensors) Wait() (*SensorsResult, error) {
	<-s.done
	return s.res, s.err
}

func (s *Sensors) snapshot() *SensorsResult {
	r := &SensorsResult{
		Acked:      make(map[string]int, len(s.acked)),
		Reconnects: int(s.reconnects.Load()),
		Elapsed:    time.Since(s.start),
	}
	for i := range s.acked {
		r.Acked[DeviceName(s.cfg.FirstDevice+i)] = int(s.acked[i].Load())
	}
	return r
}

// runDevice publishes device i's messages, reconnecting as needed, until
// all are acknowledged or ctx is done.
func (s *Sensors) runDevice(ctx context.Context, i int) {
	name := DeviceName(s.cfg.FirstDevice + i)
	topic := fmt.Sprintf(s.cfg.TopicFormat, name)
	addr, _ := brokerAddr(s.cfg.BrokerURL)
	backoff := newBackoff(50*time.Millisecond, 2*time.Second)
	seq := 0
	for connects := 0; seq < s.cfg.PerDevice; connects++ {
		if connects > 0 {
			s.reconnects.Add(1)
			if sleepCtx(ctx, backoff.next()) != nil {
				return
			}
		}
		// connCtx ends with the connection, so a publish waiting for
		// its PUBACK gives up as soon as the connection drops (paho
		// would keep it for a resend and wait for its 10s timeout).
		connCtx, connLost := context.WithCancel(ctx)
		c, err := dialMQTT(connCtx, addr, s.cfg.ClientPrefix+name, connLost)
		if err != nil {
			connLost()
			continue
		}
		for seq < s.cfg.PerDevice {
			m := Message{Device: name, Seq: seq, SentAt: time.Now().UnixNano()}
			if err := publish(connCtx, c, topic, s.cfg.QoS, EncodeMessage(m)); err != nil {
				break
			}
			backoff.reset()
			seq++
			s.acked[i].Store(int64(seq))
			s.sent.Add(1)
			if s.cfg.Interval > 0 && seq < s.cfg.PerDevice {
				if err := sleepCtx(ctx, s.cfg.Interval); err != nil {
					break
				}
			}
		}
		_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0}) // closes the connection and waits
		connLost()
		if ctx.Err() != nil {
			return
		}
	}
}

// Publish connects to the broker at brokerURL, publishes each payload to
// topic at qos (waiting for each acknowledgement), and disconnects.
func Publish(ctx context.Context, brokerURL, topic string, qos byte, payloads ...[]byte) error {
	addr, err := brokerAddr(brokerURL)
	if err != nil {
		return err
	}
	c, err := dialMQTT(ctx, addr, fmt.Sprintf("testenv-publish-%d", time.Now().UnixNano()), func() {})
	if err != nil {
		return err
	}
	defer c.Disconnect(&paho.Disconnect{})
	for _, p := range payloads {
		if err := publish(ctx, c, topic, qos, p); err != nil {
			return err
		}
	}
	return nil
}

// publish sends one message and, for QoS 1 and 2, waits for its
// acknowledgement (paho gives up after its 10s packet timeout).
func publish(ctx context.Context, c *paho.Client, topic string, qos byte, payload []byte) error {
	resp, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: payload})
	if err != nil {
		return err
	}
	if resp != nil && resp.ReasonCode >= 0x80 {
		return fmt.Errorf("publish to %s: reason code %#x", topic, resp.ReasonCode)
	}
	return nil
}

// dialMQTT connects a clean-start MQTT v5 client. onLost is called when
// the connection ends.
func dialMQTT(ctx context.Context, addr, clientID string, onLost func()) (*paho.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := new(net.Dialer).DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	c := paho.NewClient(paho.ClientConfig{
		Conn:               conn,
		ClientID:           clientID,
		OnClientError:      func(error) { onLost() },
		OnServerDisconnect: func(*paho.Disconnect) { onLost() },
	})
	// Connect also fails when the CONNACK reason code is >= 0x80.
	_, err = c.Connect(dctx, &paho.Connect{ClientID: clientID, CleanStart: true, KeepAlive: 30})
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("connect %s as %s: %w", addr, clientID, err)
	}
	return c, nil
}

// backoff is a capped exponential backoff without jitter; tests want
// predictable timing more than herd avoidance.
type backoff struct{ min, max, cur time.Duration }

func newBackoff(minD, maxD time.Duration) *backoff { return &backoff{min: minD, max: maxD} }

func (b *backoff) next() time.Duration {
	switch {
	case b.cur == 0:
		b.cur = b.min
	case b.cur < b.max:
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// sleepCtx sleeps for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
