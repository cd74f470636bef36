// Package agent wires ferry's stages together: the MQTT ingest writes into
// the buffer, the forwarder drains the buffer into Kafka. It is the one place
// that turns a config.Config into running parts, shared by the ferry command
// and the sandbox.
//
// Shutdown order keeps the promise: ingest stops first and waits for the
// commits in progress (so every stored message is acknowledged to the
// broker), then the forwarder waits a bounded time for records in flight,
// then the buffer is closed.
package agent

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/config"
	"github.com/ferry-edge/ferry/forward"
	"github.com/ferry-edge/ferry/internal/topic"
	"github.com/ferry-edge/ferry/mqtt"
)

// Agent is a configured, runnable ferry.
type Agent struct {
	cfg     *config.Config
	log     *slog.Logger
	buf     *buffer.Buffer
	ingests []*mqtt.Ingest // one per MQTT connection, in the order of cfg.MQTT
	fwd     *forward.Forwarder

	health     health       // see Healthy
	closed     atomic.Bool  // the buffer is closed: not Ready
	kafkaConns atomic.Int64 // open broker connections, from kafkaHooks
}

// Stats is a snapshot of every stage's counters.
type Stats struct {
	// MQTT sums the connections' counters; Connected and Subscribed hold
	// when they hold for every connection.
	MQTT        mqtt.Stats
	Connections []ConnectionStats // each MQTT connection's own
	Buffer      buffer.Stats
	Forward     forward.Stats
}

// ConnectionStats is one MQTT connection's counters.
type ConnectionStats struct {
	Name string // config's mqtt name
	mqtt.Stats
}

// Options adjust an agent beyond its config; the zero value is fine.
type Options struct {
	// Forward is applied to the forwarder's config after it is built from
	// the config file (tests shorten timings with it).
	Forward func(*forward.Config)
	// Hooks receive latencies for metrics (see Hooks).
	Hooks Hooks
	// StallLimit is how long a stage may make no progress before Healthy
	// reports false. Default 30s.
	StallLimit time.Duration
	// Version is ferry's version, for the status record.
	Version string
}

// New opens the buffer and prepares the stages. It does not connect yet.
func New(cfg *config.Config, log *slog.Logger, opts Options) (*Agent, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	files, err := cfg.ReadFiles()
	if err != nil {
		return nil, err
	}
	mcs, err := mqttConfigs(cfg, files, log)
	if err != nil {
		return nil, err
	}
	fc, err := forwardConfig(cfg, files, log)
	if err != nil {
		return nil, err
	}
	fc.Version = opts.Version
	if opts.Forward != nil {
		opts.Forward(&fc)
	}
	a := &Agent{cfg: cfg, log: log}
	a.health = health{limit: cmp.Or(opts.StallLimit, 30*time.Second), block: cfg.Buffer.WhenFull == "block"}
	fc.Observers = append(fc.Observers, kafkaHooks{a: a, produce: opts.Hooks.ProduceLatency})
	fc.Ingest = a.ingestStatus
	// The tail is written once half the smallest connection's window
	// waits in it: each connection's broker then keeps sending.
	receiveMaximum := cfg.MQTT[0].ReceiveMaximum
	for _, m := range cfg.MQTT {
		receiveMaximum = min(receiveMaximum, m.ReceiveMaximum)
	}
	buf, err := openBuffer(cfg.Buffer, receiveMaximum, log)
	if err != nil {
		return nil, err
	}
	var sink mqtt.Sink = buf
	if opts.Hooks.CommitLatency != nil {
		sink = timedSink{buf: buf, observe: opts.Hooks.CommitLatency}
	}
	if synced, known := clockSynced(); known && !synced {
		log.Warn("the system clock is not synchronized: records received until it is carry the header ferry.clock: unsynced, and their timestamps may be far off")
	}
	sink = &clockSink{next: sink, synced: clockSynced}
	for _, mc := range mcs {
		ingest, err := mqtt.New(mc, sink)
		if err != nil {
			buf.Close()
			return nil, err
		}
		a.ingests = append(a.ingests, ingest)
	}
	fwd, err := forward.New(fc, buf)
	if err != nil {
		buf.Close()
		return nil, err
	}
	a.buf, a.fwd = buf, fwd
	return a, nil
}

// openBuffer opens the buffer with the configured limits. A corrupt file is
// moved aside and a new buffer started, loudly, unless on_corrupt is fail.
// receiveMaximum is how many messages the MQTT broker lets ingest hold
// unacknowledged: with sync: delayed, the tail is written once half that
// many wait, so that the broker never stops sending for want of
// acknowledgements.
func openBuffer(c config.Buffer, receiveMaximum int, log *slog.Logger) (*buffer.Buffer, error) {
	lim := bufferLimits(c)
	opts := buffer.Options{
		MaxBytes:           lim.MaxBytes,
		MaxAge:             lim.MaxAge,
		MaxDeadLetterBytes: lim.MaxDeadLetterBytes,
		WhenFull:           lim.WhenFull,
		Logger:             log.With("component", "buffer"),
	}
	switch c.Sync {
	case "interval":
		opts.SyncInterval = c.SyncInterval
	case "delayed":
		opts.WriteDelay = c.WriteDelay
		opts.MaxTailRecords = max(receiveMaximum/2, 1)
	}
	// bbolt never shrinks its file: after a long outage drained, give the
	// space back before opening.
	if did, err := buffer.CompactIfSparse(c.Path, 64<<20, 0.5); errors.Is(err, buffer.ErrCorruptFile) {
		log.Warn("buffer file damaged: not compacted at startup (a copy would replace it); opening it handles the damage", "path", c.Path, "err", err)
	} else if err != nil {
		log.Warn("buffer compaction at startup failed; continuing with the file as it is", "path", c.Path, "err", err)
	} else if did {
		log.Info("buffer file compacted at startup", "path", c.Path)
	}
	if c.OnCorrupt == "fail" {
		b, err := buffer.Open(c.Path, opts)
		if errors.Is(err, buffer.ErrCorruptFile) {
			return nil, fmt.Errorf("%w (buffer.on_corrupt is fail: inspect it with `ferry buffer verify`, or set move_aside)", err)
		}
		return b, err
	}
	b, aside, err := buffer.OpenOrMoveAside(c.Path, opts)
	if aside != "" && b != nil {
		st := b.Stats()
		log.Error("BUFFER FILE CORRUPT: moved it aside and salvaged what was readable into a new buffer; those records are forwarded, the unreadable ones are lost",
			"path", c.Path, "moved_to", aside, "salvaged_records", st.Records, "corrupt_files", len(buffer.CorruptFiles(c.Path)))
	}
	return b, err
}

// mqttConfigs maps the configuration to ingest's, one per connection;
// files holds what the files it names hold.
func mqttConfigs(cfg *config.Config, files *config.Files, log *slog.Logger) ([]mqtt.Config, error) {
	var mcs []mqtt.Config
	for i := range cfg.MQTT {
		l := log
		if len(cfg.MQTT) > 1 {
			l = log.With("connection", cfg.MQTT[i].Name)
		}
		mc, err := mqttConfig(cfg, i, files.MQTT[i], l)
		if err != nil {
			return nil, err
		}
		mcs = append(mcs, mc)
	}
	return mcs, nil
}

// mqttConfig maps connection i of the configuration to ingest's; files
// holds what the files it names hold.
func mqttConfig(cfg *config.Config, i int, files config.MQTTFiles, log *slog.Logger) (mqtt.Config, error) {
	m := cfg.MQTT[i]
	u, err := url.Parse(m.URL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) { // its text quotes the URL, password and all
			ue.URL = config.RedactURL(ue.URL)
		}
		return mqtt.Config{}, fmt.Errorf("mqtt %s: url: %w", m.Name, err)
	}
	password := []byte(cmp.Or(files.Password, m.Password))
	mc := mqtt.Config{
		URL:            u,
		ClientID:       m.ClientID,
		Username:       m.Username,
		Password:       password,
		KeepAlive:      m.KeepAlive,
		SessionExpiry:  m.SessionExpiry,
		ConnectTimeout: m.ConnectTimeout,
		ReceiveMaximum: uint16(m.ReceiveMaximum),
		MaxPayload:     int(m.MaxPayloadBytes),
		TLS:            mqttTLS(m.TLS, files),
		StateFile:      mqttStateFile(cfg.Buffer.Path, i, m.Name),
		GatewayID:      cfg.GatewayID,
		Logger:         log,
	}
	for _, s := range m.Subscriptions {
		mc.Subscriptions = append(mc.Subscriptions, mqtt.Subscription{
			Filter:         s.Filter,
			QoS:            mqtt.QoS(s.QoS),
			NoLocal:        s.NoLocal,
			RetainAsPub:    s.RetainAsPublished,
			RetainHandling: mqtt.RetainHandling(s.RetainHandling),
		})
	}
	return mc, nil
}

// mqttStateFile is where ingest keeps the filters the session of
// connection i (named name) is subscribed to: next to the buffer, which is
// on the durable storage ferry owns (systemd's StateDirectory), and so
// moves with it. The first connection's is buffer.db.subscriptions, the
// others' buffer.db.<name>.subscriptions.
func mqttStateFile(bufferPath string, i int, name string) string {
	if i == 0 {
		return bufferPath + ".subscriptions"
	}
	return bufferPath + "." + name + ".subscriptions" // config allows only . _ : - [ ] besides letters and digits
}

// mqttTLS builds the TLS client config for a TLS broker URL: system roots
// unless a CA file is given, a client certificate for mutual TLS if one is.
// The server name defaults to the URL's host (ingest sets it).
func mqttTLS(c config.MQTTTLS, files config.MQTTFiles) *tls.Config {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify}
	tc.RootCAs = files.RootCAs
	if files.Certificate != nil {
		tc.Certificates = []tls.Certificate{*files.Certificate}
	}
	return tc
}

// forwardConfig maps the configuration to the forwarder's; files holds
// what the files it names hold.
func forwardConfig(cfg *config.Config, files *config.Files, log *slog.Logger) (forward.Config, error) {
	k := cfg.Forward.Kafka
	fc := forward.Config{
		Brokers:            k.Brokers,
		ClientID:           k.ClientID,
		GatewayID:          cfg.GatewayID,
		Compression:        k.Compression,
		MaxBatchBytes:      int(k.MaxBatchBytes),
		Linger:             k.Linger,
		MaxBufferedRecords: k.MaxBufferedRecords,
		MaxBufferedBytes:   int(k.MaxBufferedBytes),
		DialTimeout:        k.DialTimeout,
		Logger:             log,

		AllowAutoTopicCreation: k.AllowAutoTopicCreation,
		StatusTopic:            cfg.Forward.StatusTopic,
		StatusInterval:         cfg.Forward.StatusInterval,
		UnknownTopicTimeout:    cfg.Forward.UnknownTopicTimeout,
		MaxBytesPerSecond:      int(cfg.Forward.MaxBytesPerSecond), // at most 1GiB: fits a 32-bit int
	}
	if fc.UnknownTopicTimeout == 0 {
		fc.UnknownTopicTimeout = -1 // the config's 0s: wait for ever
	}
	if fc.LateAfter = cfg.Forward.LateAfter; fc.LateAfter == 0 {
		fc.LateAfter = -1 // the config's 0s: never
	}
	fc.TLS = kafkaTLS(k.TLS, files)
	var err error
	if fc.SASL, err = kafkaSASL(k.SASL, files); err != nil {
		return fc, err
	}
	fc.Routes, err = routes(cfg.Forward.Routes)
	return fc, err
}

// routes maps the configuration's routes to the forwarder's.
func routes(rs []config.Route) ([]forward.Route, error) {
	var out []forward.Route
	for i, r := range rs {
		var route forward.Route
		var err error
		if !r.Default {
			if route.Match, err = topic.ParsePattern(r.Match); err != nil {
				return nil, fmt.Errorf("forward.routes[%d].match: %w", i, err)
			}
		}
		if r.Drop {
			route.Drop = true
			out = append(out, route)
			continue
		}
		names := topic.TemplateNames(route.Match)
		if route.Topic, err = topic.ParseTemplate(r.Topic, names); err != nil {
			return nil, fmt.Errorf("forward.routes[%d].topic: %w", i, err)
		}
		if r.Key != "" {
			if route.Key, err = topic.ParseTemplate(r.Key, names); err != nil {
				return nil, fmt.Errorf("forward.routes[%d].key: %w", i, err)
			}
		}
		for _, h := range r.Headers {
			v, err := topic.ParseTemplate(h.Value, names)
			if err != nil {
				return nil, fmt.Errorf("forward.routes[%d].headers.%s: %w", i, h.Name, err)
			}
			route.Headers = append(route.Headers, forward.Header{Name: h.Name, Value: v})
		}
		if r.Format == config.FormatEnvelope {
			route.Format = forward.FormatEnvelope
		}
		out = append(out, route)
	}
	return out, nil
}

// bufferLimits maps the configuration's buffer limits.
func bufferLimits(c config.Buffer) buffer.Limits {
	l := buffer.Limits{MaxBytes: int64(c.MaxBytes), MaxAge: c.MaxAge, MaxDeadLetterBytes: c.DeadLetterLimit()}
	if c.WhenFull == "block" {
		l.WhenFull = buffer.Block
	}
	return l
}

// SetLimits puts the buffer limits of cfg (max_bytes, max_age,
// max_dead_letter_bytes) in force in the running buffer (a reload); the
// next commit applies them.
func (a *Agent) SetLimits(cfg *config.Config) { a.buf.SetLimits(bufferLimits(cfg.Buffer)) }

// SetRoutes puts the routes of cfg in force in the running forwarder (a
// reload): records read from the buffer from then on follow them.
func (a *Agent) SetRoutes(cfg *config.Config) error {
	rs, err := routes(cfg.Forward.Routes)
	if err != nil {
		return err
	}
	return a.fwd.SetRoutes(rs)
}

// kafkaTLS builds the TLS client config: system roots unless a CA file is
// given, a client certificate for mutual TLS if one is.
func kafkaTLS(c config.TLS, files *config.Files) *tls.Config {
	if !c.Enabled {
		return nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify}
	tc.RootCAs = files.KafkaRootCAs
	if files.KafkaCertificate != nil {
		tc.Certificates = []tls.Certificate{*files.KafkaCertificate}
	}
	return tc
}

// kafkaSASL builds the SASL mechanism, with the password of the file if
// one is named.
func kafkaSASL(c config.SASL, files *config.Files) (sasl.Mechanism, error) {
	if c.Mechanism == "" {
		return nil, nil
	}
	password := string(cmp.Or(files.KafkaPassword, c.Password))
	switch c.Mechanism {
	case "PLAIN":
		return plain.Auth{User: c.Username, Pass: password}.AsMechanism(), nil
	case "SCRAM-SHA-256":
		return scram.Auth{User: c.Username, Pass: password}.AsSha256Mechanism(), nil
	case "SCRAM-SHA-512":
		return scram.Auth{User: c.Username, Pass: password}.AsSha512Mechanism(), nil
	}
	return nil, fmt.Errorf("forward.kafka.sasl.mechanism: unknown mechanism %q", c.Mechanism)
}

// Buffer returns the agent's buffer, for read-only inspection while it runs.
func (a *Agent) Buffer() *buffer.Buffer { return a.buf }

// Stats returns the counters of every stage.
func (a *Agent) Stats() Stats {
	s := Stats{MQTT: a.mqttStats(), Buffer: a.buf.Stats(), Forward: a.fwd.Stats()}
	for i, in := range a.ingests {
		s.Connections = append(s.Connections, ConnectionStats{Name: a.cfg.MQTT[i].Name, Stats: in.Stats()})
	}
	return s
}

// Run runs the stages until ctx is done (a clean stop: nil) or a stage fails
// (its error). Either way it shuts down in order and closes the buffer.
func (a *Agent) Run(ctx context.Context) error {
	st := a.buf.Stats()
	var urls []string
	for _, m := range a.cfg.MQTT {
		urls = append(urls, config.RedactURL(m.URL))
	}
	a.log.Info("ferry running", "gateway_id", a.cfg.GatewayID, "buffer", a.buf.Path(),
		"buffered_records", st.Records, "mqtt", strings.Join(urls, ","), "kafka", strings.Join(a.cfg.Forward.Kafka.Brokers, ","))

	ingestCtx, stopIngest := context.WithCancel(context.Background())
	defer stopIngest()
	fwdCtx, stopFwd := context.WithCancel(context.Background())
	defer stopFwd()
	// Every connection's ingest runs until stopped; the first error of
	// any stops them all (ingestDone reports it, then the rest's).
	ingestDone := make(chan error, len(a.ingests))
	for _, in := range a.ingests {
		go func() { ingestDone <- in.Run(ingestCtx) }()
	}
	fwdDone := make(chan error, 1)
	go func() { fwdDone <- a.fwd.Run(fwdCtx) }()

	var ingestErr, fwdErr, damageErr error
	ingestStopped, fwdStopped := false, false
	select {
	case <-ctx.Done():
		a.log.Info("stopping: ingest first, then the forwarder, then the buffer")
	case <-a.buf.Damaged():
		// What is in memory is acknowledged only once durable, so
		// stopping loses nothing; the next start checks the whole file,
		// moves it aside and salvages it (OpenOrMoveAside).
		damageErr = fmt.Errorf("buffer file damaged while running (ferry exits so that its next start moves it aside and salvages it): %w", a.buf.Damage())
	case ingestErr = <-ingestDone:
		ingestStopped = true
	case fwdErr = <-fwdDone:
		fwdStopped = true
	}
	stopIngest()
	waiting := len(a.ingests)
	if ingestStopped {
		waiting--
	}
	for range waiting {
		ingestErr = errors.Join(ingestErr, <-ingestDone)
	}
	stopFwd()
	if !fwdStopped {
		fwdErr = <-fwdDone
	}
	a.closed.Store(true)
	closeErr := a.buf.Close()
	st = a.buf.Stats()
	fs := a.fwd.Stats()
	a.log.Info("ferry stopped", "buffered_records", st.Records, "delivered", fs.Delivered, "unrouted", fs.Unrouted)
	return errors.Join(damageErr, ingestErr, fwdErr, closeErr)
}

// LogStatus logs the agent's counters every interval until ctx is done.
func (a *Agent) LogStatus(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s := a.Stats()
			a.log.Info("status", "received", s.MQTT.Received, "stored", s.MQTT.Stored, "mqtt_connected", s.MQTT.Connected,
				"buffered_records", s.Buffer.Records, "buffered_bytes", s.Buffer.Bytes,
				"delivered", s.Forward.Delivered, "unrouted", s.Forward.Unrouted, "kafka_error", s.Forward.LastError)
		}
	}
}

// mqttStats sums the connections' counters; Connected and Subscribed
// hold when they hold for every connection.
func (a *Agent) mqttStats() mqtt.Stats {
	sum := mqtt.Stats{Connected: true, Subscribed: true}
	for _, in := range a.ingests {
		s := in.Stats()
		sum.Received += s.Received
		sum.Stored += s.Stored
		sum.Acknowledged += s.Acknowledged
		sum.Connected = sum.Connected && s.Connected
		sum.Subscribed = sum.Subscribed && s.Subscribed
		sum.SessionsLost += s.SessionsLost
		sum.DroppedUnsubscribed += s.DroppedUnsubscribed
		sum.DroppedTooLarge += s.DroppedTooLarge
	}
	return sum
}
