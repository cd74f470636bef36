// Package config turns ferry's YAML configuration file into typed, validated
// values.
//
// Parse works in separate steps: the YAML text is parsed into a node tree;
// ${VAR} references in scalar values are expanded from the environment; the
// tree is decoded strictly into the structs below (an unknown key, a
// duplicate key or a value of the wrong type is an error); defaults are
// filled in; and the result is validated. Every problem is reported, not
// only the first, each as "file:line:column: key.path: message" (see Error
// and Errors). A Config returned without error is complete: every default is
// applied and every value is within its documented limits.
//
// Expansion: "${VAR}" is replaced by the value of VAR, "${VAR:-default}" by
// default when VAR is unset or empty, and "$$" by "$"; any other "$" is kept
// as is. An unset VAR without a default is an error. Expansion applies to
// every scalar value (not to keys) before it is decoded, so numbers and
// durations may come from the environment, and expanded text is never parsed
// as YAML. An unquoted scalar is typed by its expanded text, as if it had
// been written in the file; a quoted one stays a string.
//
// Durations and sizes are int64 nanoseconds and bytes: one past that range
// (beyond 106751d, 8388607TiB) is an error that states the range, never a
// value wrapped around.
//
// A key that is absent or null gets its default; so does an empty string
// where a default is documented. An explicit zero number or duration is
// kept, and validated like any other value.
package config

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is ferry's whole configuration.
type Config struct {
	// GatewayID identifies this gateway and is stamped on every record.
	// Default: the host name.
	GatewayID string      `yaml:"gateway_id"`
	Log       Log         `yaml:"log"`
	MQTT      Connections `yaml:"mqtt"`
	Buffer    Buffer      `yaml:"buffer"`
	Forward   Forward     `yaml:"forward"`
	Admin     Admin       `yaml:"admin"`

	// Warnings holds non-fatal findings, each "file:line:column: key.path:
	// message", such as a subscription that no route can ever match.
	Warnings []string `yaml:"-"`
}

// Log configures ferry's own logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn or error; default info
	Format string `yaml:"format"` // text or json; default text
}

// Connections are the MQTT brokers ferry subscribes to, each on its own
// connection, all feeding the one buffer. In the file, mqtt is one
// connection's mapping, or a sequence of them (mqtt[0], mqtt[1], ...).
type Connections []MQTT

// MarshalYAML writes a single connection as the mapping it was read from.
func (c Connections) MarshalYAML() (any, error) {
	if len(c) == 1 {
		return c[0], nil
	}
	return []MQTT(c), nil
}

// MQTT configures a connection to an MQTT broker ferry subscribes to.
// Ferry uses a persistent session, so messages published while it is
// disconnected are queued by the broker for up to SessionExpiry.
type MQTT struct {
	// Name names the connection in logs and status. Default: the host
	// and port of URL. Names must be unique.
	Name string `yaml:"name"`
	// URL of the broker; required. Schemes tcp, mqtt (plain TCP), ssl,
	// tls, mqtts (TLS), ws and wss (WebSocket); the host and port are
	// required.
	URL string `yaml:"url"`
	// ClientID must stay the same across restarts for the broker to find
	// the persistent session. Default: "ferry-" + GatewayID for the first
	// connection, with "-" + Name for the others.
	ClientID string `yaml:"client_id"`
	Username string `yaml:"username"`
	Password Secret `yaml:"password"`
	// PasswordFile names a file holding the password (a trailing newline
	// is not part of it); mutually exclusive with Password. LoadAndCheck
	// and ReadFiles read it.
	PasswordFile string `yaml:"password_file"`
	// KeepAlive is the MQTT keep-alive interval, in whole seconds from 1s
	// to 65535s. Default 30s.
	KeepAlive time.Duration `yaml:"keep_alive"`
	// SessionExpiry is how long the broker keeps the session after a
	// disconnect, in whole seconds from 1s to 4294967295s (which means
	// never). Default 24h.
	SessionExpiry time.Duration `yaml:"session_expiry"`
	// ConnectTimeout bounds one connection attempt; > 0. Default 10s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// ReceiveMaximum is the number of QoS 1 and 2 messages the broker may
	// have in flight awaiting ferry's acknowledgement, which comes once
	// the message is durable (see Buffer.Sync); 1 to 65535. Default 1000.
	ReceiveMaximum int `yaml:"receive_maximum"`
	// MaxPayloadBytes bounds the payload of a message ferry takes, from
	// 1KiB to 255MiB. ferry advertises it to the broker (CONNECT's Maximum
	// Packet Size, with room for the topic and properties), which then
	// does not send larger messages; one that still comes (a broker that
	// ignores the limit) is acknowledged, counted as dropped (reason
	// too_large) and logged, and never read whole into memory. Default
	// 1MiB.
	MaxPayloadBytes ByteSize `yaml:"max_payload_bytes"`
	// TLS configures the connection to a broker at an ssl://, tls://,
	// mqtts:// or wss:// URL; it is an error with another scheme.
	// Without it such a connection verifies the broker with the system's
	// roots.
	TLS MQTTTLS `yaml:"tls"`
	// Subscriptions are the filters subscribed to; at least one, no
	// filter twice.
	Subscriptions []Subscription `yaml:"subscriptions"`
}

// MQTTTLS configures TLS to the MQTT broker. TLS itself comes from the
// URL's scheme.
type MQTTTLS struct {
	// CAFile is a PEM file of CA certificates to trust. Default: the
	// system's roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate and its key, for
	// mutual TLS; both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in the broker's certificate.
	// Default: the URL's host.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any broker certificate. Only for tests:
	// ferry warns loudly when it is on.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Subscription is one MQTT subscription.
type Subscription struct {
	// Filter is an MQTT topic filter, or a shared subscription
	// "$share/group/filter" (the broker gives each message to one member
	// of the group: several gateways or ferry processes split one
	// stream); required. Routes match the topics of filter.
	Filter string `yaml:"filter"`
	QoS    int    `yaml:"qos"` // 0, 1 or 2; default 1 when the key is absent
	// NoLocal: the broker does not send messages that ferry's own client
	// id published. Not allowed on a shared subscription. Default false.
	NoLocal bool `yaml:"no_local"`
	// RetainAsPublished: messages keep the retain flag they were published
	// with (otherwise the broker clears it on forwarded messages; the
	// record's mqtt retain flag tells a retained message sent at subscribe
	// time either way). Default false.
	RetainAsPublished bool `yaml:"retain_as_published"`
	// RetainHandling is when the broker sends the retained messages of the
	// filter's topics: 0 at every subscribe (ferry subscribes on every
	// connection, so after every reconnect), 1 only when the subscription
	// is new to the session, 2 never. Default 1.
	RetainHandling int `yaml:"retain_handling"`
}

// Buffer configures the durable on-disk buffer.
type Buffer struct {
	// Path of the buffer database. Default: buffer.db in
	// $STATE_DIRECTORY (its first entry, if it holds several separated
	// by ':'), else ./ferry-buffer.db.
	Path string `yaml:"path"`
	// Sync is when a message counts as durable, so that it is
	// acknowledged to the broker:
	//   - "delayed" (default): once Kafka acknowledged it (acks=all) or
	//     it was written and fsynced locally, whichever comes first. A
	//     record waits in memory up to WriteDelay; records Kafka has not
	//     acknowledged by then are written in one commit. With a healthy
	//     uplink nothing is written to flash.
	//   - "always": once it was written and fsynced locally, whatever
	//     Kafka says; commits as soon as records wait, many at once.
	//   - "interval": as always, committing at most once per
	//     SyncInterval: fewer, larger writes, more latency.
	Sync string `yaml:"sync"`
	// WriteDelay is how long a record waits in memory with sync: delayed
	// before it is written; > 0 and at most 1h. Default 100ms. It follows
	// Kafka: twice its last acknowledgement latency when longer, doubling
	// commit after commit while Kafka acknowledges nothing, at most 8
	// times this; the tail is also written once half of
	// mqtt.receive_maximum records wait.
	WriteDelay time.Duration `yaml:"write_delay"`
	// SyncInterval is the commit interval with sync: interval; > 0.
	// Default 100ms.
	SyncInterval time.Duration `yaml:"sync_interval"`
	// MaxBytes bounds the disk space the buffer occupies (the file's pages
	// in use), e.g. 512MiB or 2GB; at least 1MiB, so that a record as
	// large as Kafka takes fits. Default 1GiB (768MiB on 32-bit systems,
	// where bbolt must map the whole file into the address space); 0
	// means no bound.
	MaxBytes ByteSize `yaml:"max_bytes"`
	// MaxDeadLetterBytes bounds the dead-letter bucket (records Kafka
	// rejects for good, or that cannot be decoded), on the entries' stored
	// size; beyond it the oldest are dropped and counted. It is apart from
	// MaxBytes: the file holds up to MaxBytes of buffered records plus
	// MaxDeadLetterBytes of dead letters. Default 64MiB; 0 means no bound
	// (not allowed on 32-bit systems, where MaxBytes plus this must stay
	// within 832MiB).
	MaxDeadLetterBytes ByteSize `yaml:"max_dead_letter_bytes"`
	// MaxAge drops records received longer ago than this, e.g. 7d or 36h;
	// 0 turns it off. Default 7d.
	MaxAge time.Duration `yaml:"max_age"`
	// WhenFull is what happens at MaxBytes: "drop_oldest" (default:
	// telemetry wants the newest; drops are counted) or "block" (stop
	// acknowledging, so the broker holds the messages and publishers feel
	// backpressure).
	WhenFull string `yaml:"when_full"`
	// OnCorrupt is what happens when the buffer file cannot be opened as a
	// database: "move_aside" (default: it is renamed
	// buffer.db.corrupt-<time>, kept for inspection, and a new buffer is
	// started) or "fail" (ferry refuses to start).
	OnCorrupt string `yaml:"on_corrupt"`
}

// DeadLetterLimit is MaxDeadLetterBytes as a limit in bytes, negative for
// none (MaxDeadLetterBytes 0), as the buffer's options take it.
func (b Buffer) DeadLetterLimit() int64 {
	if b.MaxDeadLetterBytes == 0 {
		return -1
	}
	return int64(b.MaxDeadLetterBytes)
}

// ByteSize is a size in bytes. In YAML it is an integer or a number with a
// unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers
// of 1024).
type ByteSize int64

// String formats the size with the largest binary unit that divides it.
func (b ByteSize) String() string {
	for _, u := range []struct {
		name string
		n    int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && int64(b)%u.n == 0 {
			return fmt.Sprintf("%d%s", int64(b)/u.n, u.name)
		}
	}
	return fmt.Sprintf("%dB", int64(b))
}

// MarshalYAML writes the size as String does.
func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }

// Forward configures where buffered records go.
type Forward struct {
	Kafka Kafka `yaml:"kafka"`
	// Routes map MQTT topics to Kafka topics and keys; at least one. The
	// first route whose Match matches a message's topic wins.
	Routes []Route `yaml:"routes"`
	// StatusTopic receives a JSON status record keyed by gateway id every
	// StatusInterval and soon after the buffer drops records at a limit,
	// so the data centre knows what the gateway lost. Default
	// "ferry.status"; an empty string turns it off.
	StatusTopic string `yaml:"status_topic"`
	// StatusInterval is how often the status record is sent; >= 1s.
	// Default 1m.
	StatusInterval time.Duration `yaml:"status_interval"`
	// UnknownTopicTimeout is how long records wait for a Kafka topic that
	// does not exist before they are dead-lettered (records of other
	// topics go on meanwhile); 0s: wait for ever. Default 1m.
	UnknownTopicTimeout time.Duration `yaml:"unknown_topic_timeout"`
	// LateAfter: a record produced more than LateAfter after ferry
	// received it (it waited out an outage or a backlog) carries the
	// header ferry.late_ms with how long it waited; its timestamp stays
	// the receive time. 0s: never. Default 1m.
	LateAfter time.Duration `yaml:"late_after"`
	// MaxBytesPerSecond caps what the forwarder sends to Kafka, in bytes a
	// second as they go on the wire (after compression), e.g. 50KB for a
	// metered cellular link: 0 or from 1KiB to 1GiB. Default 0: no cap.
	MaxBytesPerSecond ByteSize `yaml:"max_bytes_per_second"`
}

// Kafka configures the Kafka producer.
type Kafka struct {
	Brokers []string `yaml:"brokers"` // seed brokers, each host:port; at least one
	// ClientID is the Kafka client id. Default: "ferry-" + GatewayID.
	ClientID string `yaml:"client_id"`
	// Compression of record batches: none, gzip, snappy, lz4 or zstd.
	// Default zstd (on JSON telemetry about 12 times fewer bytes on the
	// wire than none, for about the same CPU once the smaller requests
	// are counted; see BenchmarkCompression in forward).
	Compression string `yaml:"compression"`
	// MaxBatchBytes is the largest record batch sent to Kafka: at most the
	// topics' max.message.bytes (the broker's message.max.bytes, 1048588
	// by default). A record that cannot fit one with its overhead is
	// dead-lettered (reason message_too_large) without being sent.
	// 64KiB to 64MiB; default 1MiB.
	MaxBatchBytes ByteSize `yaml:"max_batch_bytes"`
	// Linger is how long the forwarder waits for more records before it
	// produces a chunk that does not fill the window; >= 0. Default 0.
	Linger time.Duration `yaml:"linger"`
	// MaxBufferedRecords and MaxBufferedBytes bound the records read from
	// the buffer and not yet acknowledged by Kafka (the forwarder's
	// memory; within them the forwarder sizes its window to the link's
	// round trip); 1 to 1000000 and 64KiB to 1GiB. Defaults 20000 and
	// 16MiB.
	MaxBufferedRecords int      `yaml:"max_buffered_records"`
	MaxBufferedBytes   ByteSize `yaml:"max_buffered_bytes"`
	// DialTimeout bounds one connection attempt to a broker; > 0.
	// Default 10s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// AllowAutoTopicCreation lets the producer ask the cluster to create a
	// missing topic (if the cluster allows it). Default false: a missing
	// topic is an error in the log and the records wait in the buffer.
	AllowAutoTopicCreation bool `yaml:"allow_auto_topic_creation"`
	TLS                    TLS  `yaml:"tls"`
	SASL                   SASL `yaml:"sasl"`
}

// TLS configures encryption to the Kafka brokers.
type TLS struct {
	// Enabled turns TLS on. Default: true when the tls section is present.
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM file of CA certificates to trust. Default: the
	// system's roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate and its key, for
	// mutual TLS; both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in the brokers' certificates.
	// Default: the host each broker is dialled by.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any broker certificate. Only for tests:
	// ferry warns loudly when it is on.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// SASL configures authentication to the Kafka brokers.
type SASL struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty: no SASL.
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"` // required with a mechanism
	// Password, or PasswordFile naming a file that holds it (exactly one
	// with a mechanism). ${VAR} takes it from the environment. It is never
	// printed or logged.
	Password     Secret `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
}

// Route sends the messages whose topic matches Match to a Kafka topic, or
// drops them.
type Route struct {
	// Match is an MQTT topic filter in which a level may be "{name}": it
	// matches one level like "+" and captures it, and a "#" last level
	// captures the rest of the topic as {#} (see topic.ParsePattern).
	// Required, unless Default is set.
	Match string `yaml:"match"`
	// Default makes the route match every topic (also those that start
	// with '$'), with the whole topic as {#}; it has no Match and must be
	// the last route.
	Default bool `yaml:"default,omitempty"`
	// Drop drops the matching messages, counted as dropped by reason
	// "route" (not as unrouted); such a route has no Topic, Key, Headers
	// or Format.
	Drop bool `yaml:"drop,omitempty"`
	// Topic is the Kafka topic; required unless Drop. It may use {name}
	// placeholders captured by Match, {#} and {gateway_id} (see
	// topic.ParseTemplate and topic.TemplateNames). Its literal text must
	// use only [a-zA-Z0-9._-]; a static Topic must also be a valid Kafka
	// topic name. An expanded name Kafka would refuse dead-letters the
	// record (reason invalid_topic).
	Topic string `yaml:"topic"`
	// Key is the record key template, like Topic; empty means no key.
	Key string `yaml:"key"`
	// Headers are Kafka record headers the route adds, each a template
	// like Key (static text is a template too), in file order. Names
	// starting with "ferry." or "mqtt." are ferry's own.
	Headers RouteHeaders `yaml:"headers,omitempty"`
	// Format is how the record's value is written: raw (the MQTT payload
	// unchanged; the default) or envelope (a JSON object with the payload
	// and the message's MQTT metadata).
	Format RecordFormat `yaml:"format"`
}

// RouteHeaders are a route's headers, in file order: a YAML mapping of
// header name to value template.
type RouteHeaders []RouteHeader

// RouteHeader is one header of a route.
type RouteHeader struct {
	Name, Value string
}

// MarshalYAML writes h as the mapping it was read from.
func (h RouteHeaders) MarshalYAML() (any, error) {
	n := &yaml.Node{Kind: yaml.MappingNode}
	for _, x := range h {
		n.Content = append(n.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Value: x.Name},
			&yaml.Node{Kind: yaml.ScalarNode, Value: x.Value})
	}
	return n, nil
}

// RecordFormat is how a route writes a record's value.
type RecordFormat string

// The record formats.
const (
	FormatRaw      RecordFormat = "raw"
	FormatEnvelope RecordFormat = "envelope"
)

// Admin configures ferry's HTTP endpoint for monitoring.
type Admin struct {
	// Listen is the host:port serving Prometheus /metrics, /healthz and
	// /readyz. Default 127.0.0.1:9464; an empty string turns it off. The
	// endpoint has no authentication: keep it on loopback or a management
	// network.
	Listen string `yaml:"listen"`
}

// Secret is a string that prints as "***" (when not empty) with fmt and in
// YAML, so it does not leak into logs or `ferry check` output.
type Secret string

const masked = "***"

// String returns "***", or "" for an empty Secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return masked
}

// GoString masks s for the %#v verb as String does.
func (s Secret) GoString() string { return fmt.Sprintf("config.Secret(%q)", s.String()) }

// MarshalYAML masks s as String does.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// Env is what Parse reads from its surroundings. A nil field uses the
// process's own: os.LookupEnv and os.Hostname.
type Env struct {
	Lookup   func(name string) (value string, ok bool)
	Hostname func() (string, error)
	// IntSize is the platform's word size in bits (32 or 64); 0 means
	// this process's. Limits that depend on the address space use it.
	IntSize int
}

func (e Env) intSize() int {
	if e.IntSize == 0 {
		return strconv.IntSize
	}
	return e.IntSize
}

func (e Env) lookup(name string) (string, bool) {
	if e.Lookup == nil {
		return os.LookupEnv(name)
	}
	return e.Lookup(name)
}

func (e Env) hostname() (string, error) {
	if e.Hostname == nil {
		return os.Hostname()
	}
	return e.Hostname()
}

// MaxFileSize is the largest configuration file Load reads: a real one is a
// few KiB, and parsing costs about 200 bytes of memory per byte of YAML.
const MaxFileSize = 1 << 20

// Load reads and parses the configuration file at path, expanding variables
// from the process environment. Errors name path as given. It reads no
// other file: LoadAndCheck also reads the files the configuration names.
func Load(path string) (*Config, error) { return load(path, Env{}, false) }

// LoadAndCheck is Load followed by the checks that need the machine ferry
// runs on: every file the configuration names (password files, the Kafka
// CA, client certificate and key) is read and checked as ReadFiles does,
// each problem reported at its key's file:line:column; and the buffer's
// bounds are compared with the file system that holds it, with a warning
// in Config.Warnings when the buffer can never reach them. ferry check and
// ferry run both load their file with it, so what check accepts, run
// starts with.
func LoadAndCheck(path string) (*Config, error) { return load(path, Env{}, true) }

// load is Load, and with check LoadAndCheck, with env.
func load(path string, env Env, check bool) (*Config, error) {
	data, err := readConfigFile(path)
	if err != nil {
		return nil, err
	}
	c, src, errs := parse(path, data, env)
	if check && c != nil {
		readFiles(c, func(i int) string { return mqttPath(src, i) }, func(key string, err error) { errs = append(errs, src.errorAt(key, "%v", err)) })
		errs.sort()
	}
	if errs != nil {
		return nil, errs.bounded()
	}
	if check {
		checkSpace(c, src)
	}
	return c, nil
}

// readConfigFile reads the configuration file at path, refusing one over
// MaxFileSize before reading it.
func readConfigFile(path string) ([]byte, error) {
	tooLarge := func(size string) error {
		return Errors{{File: path, Msg: fmt.Sprintf("the file is %s; a configuration file may be at most %v (%d bytes)", size, ByteSize(MaxFileSize), MaxFileSize)}}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > MaxFileSize {
		return nil, tooLarge(fmt.Sprintf("%d bytes", fi.Size()))
	}
	// Not a regular file (a pipe), or one still growing: read one byte
	// past the limit to tell.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	if len(data) > MaxFileSize {
		return nil, tooLarge(fmt.Sprintf("more than %d bytes", MaxFileSize))
	}
	return data, nil
}

// Parse parses data, naming it name in error positions, and returns the
// complete, validated configuration. The error, if any, is an Errors value
// holding every problem found. It reads no file.
func Parse(name string, data []byte, env Env) (*Config, error) {
	c, _, errs := parse(name, data, env)
	if errs != nil {
		return nil, errs.bounded()
	}
	return c, nil
}

// parse is Parse that also returns where each key is in the file. The
// configuration is nil if the file could not be decoded; otherwise it is
// returned with the problems validation found, if any, sorted and not yet
// bounded.
func parse(name string, data []byte, env Env) (*Config, *source, Errors) {
	root, errs := parseYAML(name, data)
	if errs != nil {
		return nil, nil, errs
	}
	src := &source{file: name, pos: map[string]pos{}}
	expand(src, root, "", env, &errs)
	var c Config
	decode(src, root, "", reflect.ValueOf(&c).Elem(), &errs)
	if errs != nil {
		errs.sort()
		return nil, src, errs
	}
	setDefaults(&c, src, env, &errs)
	validate(&c, src, env, &errs)
	errs.sort()
	return &c, src, errs
}

// Masked returns the effective configuration as YAML, with secrets shown as
// "***" and durations as Go duration strings. Parsing it again yields the
// same configuration, except for masked secrets and for values holding a
// '$', which Masked prints as they are rather than escaped.
func (c *Config) Masked() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	return b.Bytes(), nil
}
