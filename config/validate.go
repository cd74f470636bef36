package config

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-edge/ferry/internal/topic"
)

// Defaults, as documented on the fields.
const (
	defaultLogLevel        = "info"
	defaultLogFormat       = "text"
	defaultKeepAlive       = 30 * time.Second
	defaultSessionExpiry   = 24 * time.Hour
	defaultConnectTimeout  = 10 * time.Second
	defaultReceiveMaximum  = 1000
	defaultQoS             = 1
	defaultRetainHandling  = 1
	defaultMaxPayloadBytes = 1 << 20
	minMaxPayloadBytes     = 1 << 10
	// maxMaxPayloadBytes leaves room for the topic and properties within
	// MQTT's largest packet (268,435,455 bytes).
	maxMaxPayloadBytes        = 255 << 20
	defaultCompression        = "zstd"
	defaultLateAfter          = time.Minute
	defaultMaxBufferedRecords = 20000
	defaultMaxBufferedBytes   = 16 << 20
	defaultMaxBatchBytes      = 1 << 20 // Kafka's default message.max.bytes (1048588), rounded down
	minMaxBatchBytes          = 64 << 10
	maxMaxBatchBytes          = 64 << 20
	minMaxBufferedBytes       = 64 << 10
	// The forwarder's window is memory: its bounds stay well within what
	// a gateway has (about 700 bytes a record plus the records' bytes),
	// and within an int once franz-go's own margins are added.
	maxMaxBufferedBytes   = 1 << 30
	maxMaxBufferedRecords = 1_000_000
	// forward.max_bytes_per_second: below 1KiB is a unit left out (50
	// for 50KB), and 1GiB a second is beyond any link the cap is for
	// while it fits an int on a 32-bit system.
	minBytesPerSecond = 1 << 10
	maxBytesPerSecond = 1 << 30
	// minMaxBytes is the smallest bounded buffer that works: it must hold
	// one record as large as Kafka takes (1,000,000 bytes with its key,
	// topic and headers) with room to spare. Below it, drop_oldest
	// acknowledges every message and drops it; block stops ferry.
	minMaxBytes = 1 << 20
	// maxSubscriptions and maxRoutes bound the lists: each message is
	// matched against the routes in order, and validation checks every
	// subscription against every route (20,000 of each took 19 s).
	// Wildcards cover any real gateway's topics in far fewer.
	maxSubscriptions = 1000
	maxRoutes        = 1000
	// maxWriteDelay bounds buffer.write_delay: a record may wait in
	// memory, unacknowledged, up to 8 times it.
	maxWriteDelay             = time.Hour
	defaultUnknownTopicWait   = time.Minute
	defaultDialTimeout        = 10 * time.Second
	defaultBufferFile         = "buffer.db"         // in $STATE_DIRECTORY
	fallbackBufferPath        = "./ferry-buffer.db" // without $STATE_DIRECTORY
	defaultSyncInterval       = 100 * time.Millisecond
	defaultWriteDelay         = 100 * time.Millisecond
	defaultMaxBytes           = 1 << 30
	defaultMaxAge             = 7 * 24 * time.Hour
	defaultMaxDeadLetterBytes = 64 << 20
	// maxBytes32 is the most a 32-bit system may buffer, and maxFile32 the
	// most its buffer file may hold, max_bytes plus max_dead_letter_bytes
	// (the defaults fill it): bbolt maps the whole file (plus its growth
	// step and rounding of the map size), a compaction maps a second
	// file, and a 32-bit process's address space holds only about 2 GiB
	// of maps reliably.
	maxBytes32 = 768 << 20
	maxFile32  = maxBytes32 + defaultMaxDeadLetterBytes
	// defaultAdminListen serves metrics on loopback only.
	defaultAdminListen = "127.0.0.1:9464"
)

// setDefaults fills in what the file left out: absent or null keys, and
// empty strings that have a default.
func setDefaults(c *Config, src *source, env Env, errs *Errors) {
	if c.GatewayID == "" {
		host, err := env.hostname()
		if err != nil || host == "" {
			*errs = append(*errs, src.errorAt("gateway_id", "not set, and the host name is unavailable to default to (%v)", err))
		}
		c.GatewayID = host
	}
	setString(&c.Log.Level, defaultLogLevel)
	setString(&c.Log.Format, defaultLogFormat)
	setIfAbsent(src, "admin.listen", &c.Admin.Listen, defaultAdminListen) // "" is off

	if len(c.MQTT) == 0 {
		c.MQTT = Connections{{}} // absent: one connection, whose url is missing
	}
	brokers := map[string]int{} // host:port -> connections to it
	for _, m := range c.MQTT {
		brokers[hostPort(m.URL)]++
	}
	for i := range c.MQTT {
		m, p := &c.MQTT[i], mqttPath(src, i)
		setString(&m.Name, hostPort(m.URL))
		// The session's name on its broker: the same wherever the
		// connection stands in the list (a connection added before it
		// must not take its session), with the name added only where two
		// connections share a broker.
		if brokers[hostPort(m.URL)] > 1 {
			setString(&m.ClientID, "ferry-"+c.GatewayID+"-"+m.Name)
		} else {
			setString(&m.ClientID, "ferry-"+c.GatewayID)
		}
		setIfAbsent(src, p+".keep_alive", &m.KeepAlive, defaultKeepAlive)
		setIfAbsent(src, p+".session_expiry", &m.SessionExpiry, defaultSessionExpiry)
		setIfAbsent(src, p+".connect_timeout", &m.ConnectTimeout, defaultConnectTimeout)
		setIfAbsent(src, p+".receive_maximum", &m.ReceiveMaximum, defaultReceiveMaximum)
		setIfAbsent(src, p+".max_payload_bytes", &m.MaxPayloadBytes, defaultMaxPayloadBytes)
		for j := range m.Subscriptions {
			setIfAbsent(src, fmt.Sprintf("%s.subscriptions[%d].qos", p, j), &m.Subscriptions[j].QoS, defaultQoS)
			setIfAbsent(src, fmt.Sprintf("%s.subscriptions[%d].retain_handling", p, j), &m.Subscriptions[j].RetainHandling, defaultRetainHandling)
		}
	}

	bu := &c.Buffer
	setString(&bu.Sync, "delayed")
	setIfAbsent(src, "buffer.sync_interval", &bu.SyncInterval, defaultSyncInterval)
	setIfAbsent(src, "buffer.write_delay", &bu.WriteDelay, defaultWriteDelay)
	defaultMax := ByteSize(defaultMaxBytes)
	if env.intSize() == 32 {
		defaultMax = maxBytes32
	}
	setIfAbsent(src, "buffer.max_bytes", &bu.MaxBytes, defaultMax)
	setIfAbsent(src, "buffer.max_dead_letter_bytes", &bu.MaxDeadLetterBytes, defaultMaxDeadLetterBytes)
	setIfAbsent(src, "buffer.max_age", &bu.MaxAge, defaultMaxAge)
	setString(&bu.WhenFull, "drop_oldest")
	setString(&bu.OnCorrupt, "move_aside")

	if c.Buffer.Path == "" {
		c.Buffer.Path = fallbackBufferPath
		if dirs, ok := env.lookup("STATE_DIRECTORY"); ok {
			if dir, _, _ := strings.Cut(dirs, ":"); dir != "" {
				c.Buffer.Path = filepath.Join(dir, defaultBufferFile)
			}
		}
	}

	k := &c.Forward.Kafka
	setString(&k.ClientID, "ferry-"+c.GatewayID)
	setString(&k.Compression, defaultCompression)
	setIfAbsent(src, "forward.kafka.max_buffered_records", &k.MaxBufferedRecords, defaultMaxBufferedRecords)
	setIfAbsent(src, "forward.kafka.max_buffered_bytes", &k.MaxBufferedBytes, ByteSize(defaultMaxBufferedBytes))
	setIfAbsent(src, "forward.kafka.max_batch_bytes", &k.MaxBatchBytes, ByteSize(defaultMaxBatchBytes))
	setIfAbsent(src, "forward.kafka.dial_timeout", &k.DialTimeout, defaultDialTimeout)
	setIfAbsent(src, "forward.kafka.tls.enabled", &k.TLS.Enabled, src.isSet("forward.kafka.tls"))
	setIfAbsent(src, "forward.status_topic", &c.Forward.StatusTopic, "ferry.status")
	setIfAbsent(src, "forward.status_interval", &c.Forward.StatusInterval, time.Minute)
	setIfAbsent(src, "forward.unknown_topic_timeout", &c.Forward.UnknownTopicTimeout, defaultUnknownTopicWait)
	setIfAbsent(src, "forward.late_after", &c.Forward.LateAfter, defaultLateAfter)
	for i := range c.Forward.Routes {
		if r := &c.Forward.Routes[i]; r.Format == "" && !r.Drop {
			r.Format = FormatRaw
		}
	}
}

func setString(s *string, def string) {
	if *s == "" {
		*s = def
	}
}

func setIfAbsent[T any](src *source, path string, v *T, def T) {
	if !src.isSet(path) {
		*v = def
	}
}

// validate checks c, whose defaults are set, and appends every problem to
// errs and every non-fatal finding to c.Warnings.
func validate(c *Config, src *source, env Env, errs *Errors) {
	bad := func(path, format string, args ...any) {
		*errs = append(*errs, src.errorAt(path, format, args...))
	}
	oneOf := func(path, v string, allowed ...string) {
		if !slices.Contains(allowed, v) {
			bad(path, "must be %s, got %q", orList(allowed), v)
		}
	}
	oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	oneOf("log.format", c.Log.Format, "text", "json")
	if a := c.Admin.Listen; a != "" {
		if msg := checkHostPort(a); msg != "" {
			bad("admin.listen", "must be host:port (0.0.0.0:9464 for every interface) or \"\" (off), got %q: %s", RedactURL(a), msg)
		}
	}

	bu := &c.Buffer
	oneOf("buffer.sync", bu.Sync, "delayed", "always", "interval")
	if bu.Sync == "interval" && bu.SyncInterval <= 0 {
		bad("buffer.sync_interval", "must be more than 0s with sync: interval, got %v", bu.SyncInterval)
	}
	if bu.Sync == "delayed" && bu.WriteDelay <= 0 {
		bad("buffer.write_delay", "must be more than 0s with sync: delayed (sync: always writes every record before its acknowledgement), got %v", bu.WriteDelay)
	} else if bu.WriteDelay > maxWriteDelay {
		bad("buffer.write_delay", "must be at most %s (a record waits in memory, unacknowledged, up to 8 times it), got %s", shortDuration(maxWriteDelay), shortDuration(bu.WriteDelay))
	}
	if bu.MaxBytes < 0 || bu.MaxBytes > 0 && bu.MaxBytes < minMaxBytes {
		bad("buffer.max_bytes", "must be 0 (no bound) or at least %v, got %v: the buffer must hold a record as large as Kafka takes (1,000,000 bytes); smaller, with when_full: drop_oldest every message would be acknowledged and dropped, with block ferry would stop",
			ByteSize(minMaxBytes), bu.MaxBytes)
	}
	if env.intSize() == 32 && (bu.MaxBytes == 0 || bu.MaxBytes > maxBytes32) {
		bad("buffer.max_bytes", "must be at most %v on a 32-bit system, got %v: bbolt maps the whole buffer file into memory and a 32-bit process cannot map more reliably", ByteSize(maxBytes32), bu.MaxBytes)
	}
	if bu.MaxDeadLetterBytes < 0 {
		bad("buffer.max_dead_letter_bytes", "must be 0 (no bound) or more, got %v", bu.MaxDeadLetterBytes)
	} else if env.intSize() == 32 && bu.MaxBytes > 0 && bu.MaxBytes <= maxBytes32 &&
		(bu.MaxDeadLetterBytes == 0 || bu.MaxDeadLetterBytes > maxFile32-bu.MaxBytes) {
		bad("buffer.max_dead_letter_bytes", "must be at most %v on a 32-bit system with max_bytes %v, got %v: bbolt maps the whole buffer file into memory, and max_bytes plus max_dead_letter_bytes must stay within %v",
			maxFile32-bu.MaxBytes, bu.MaxBytes, bu.MaxDeadLetterBytes, ByteSize(maxFile32))
	}
	if bu.MaxAge < 0 {
		bad("buffer.max_age", "must be 0 (off) or more, got %v", bu.MaxAge)
	}
	oneOf("buffer.when_full", bu.WhenFull, "drop_oldest", "block")
	oneOf("buffer.on_corrupt", bu.OnCorrupt, "move_aside", "fail")

	names := map[string]int{}
	sessions := map[string]int{} // broker and client id -> connection
	filters := make([]map[string]int, len(c.MQTT))
	for i := range c.MQTT {
		m, p := &c.MQTT[i], mqttPath(src, i)
		filters[i] = validateMQTT(c, src, m, p, bad)
		if m.Name != "" && !validName(m.Name) {
			bad(p+".name", "%q: a name is 1 to 64 letters, digits and . _ : - [ ] (it names a file and the session's client id)", m.Name)
		}
		if j, dup := names[m.Name]; m.Name == "" {
			// no URL to name it after: that error is enough
		} else if dup && src.isSet(p+".name") {
			bad(p+".name", "%q is the name of %s too: give each connection its own name", m.Name, mqttPath(src, j))
		} else if dup {
			bad(p, "connects to %s as %s does: set name on each (it names the connection in logs and status, and its session's client id)", m.Name, mqttPath(src, j))
		}
		names[m.Name] = i
		if session := hostPort(m.URL) + " " + m.ClientID; m.URL != "" {
			if j, dup := sessions[session]; dup {
				bad(p+".client_id", "%q is the client id of %s too, on the same broker: the two would take each other's session", m.ClientID, mqttPath(src, j))
			}
			sessions[session] = i
		}
	}

	k := &c.Forward.Kafka
	if len(k.Brokers) == 0 {
		bad("forward.kafka.brokers", "at least one broker is required, e.g. [127.0.0.1:9092]")
	}
	for i, b := range k.Brokers {
		if msg := checkHostPort(b); msg != "" {
			bad(fmt.Sprintf("forward.kafka.brokers[%d]", i), "must be host:port, got %q: %s", RedactURL(b), msg)
		}
	}
	oneOf("forward.kafka.compression", k.Compression, "none", "gzip", "snappy", "lz4", "zstd")
	if k.Linger < 0 {
		bad("forward.kafka.linger", "must be 0s or more, got %v", k.Linger)
	}
	if k.MaxBufferedRecords < 1 || k.MaxBufferedRecords > maxMaxBufferedRecords {
		bad("forward.kafka.max_buffered_records", "must be from 1 to %d (the forwarder holds them in memory), got %d", maxMaxBufferedRecords, k.MaxBufferedRecords)
	}
	if k.MaxBatchBytes < minMaxBatchBytes || k.MaxBatchBytes > maxMaxBatchBytes {
		bad("forward.kafka.max_batch_bytes", "must be from %v to %v (at most the topics' max.message.bytes), got %v", ByteSize(minMaxBatchBytes), ByteSize(maxMaxBatchBytes), k.MaxBatchBytes)
	}
	if k.MaxBufferedBytes < minMaxBufferedBytes || k.MaxBufferedBytes > maxMaxBufferedBytes {
		bad("forward.kafka.max_buffered_bytes", "must be from %v to %v (the forwarder holds them in memory), got %v", ByteSize(minMaxBufferedBytes), ByteSize(maxMaxBufferedBytes), k.MaxBufferedBytes)
	}
	if k.DialTimeout <= 0 {
		bad("forward.kafka.dial_timeout", "must be more than 0s, got %v", k.DialTimeout)
	}
	if (k.TLS.CertFile == "") != (k.TLS.KeyFile == "") {
		bad("forward.kafka.tls", "cert_file and key_file go together: set both for mutual TLS, or neither")
	}
	if !k.TLS.Enabled && (k.TLS.CAFile != "" || k.TLS.CertFile != "" || k.TLS.ServerName != "" || k.TLS.InsecureSkipVerify) {
		bad("forward.kafka.tls.enabled", "is false but other tls settings are given; remove them or enable TLS")
	}
	if k.TLS.Enabled && k.TLS.InsecureSkipVerify {
		c.Warnings = append(c.Warnings, src.errorAt("forward.kafka.tls.insecure_skip_verify",
			"broker certificates are NOT verified: anyone on the path can read and change the data; use only for tests").Error())
	}
	if sa := k.SASL; sa.Mechanism == "" && (sa.Username != "" || sa.Password != "" || sa.PasswordFile != "") {
		bad("forward.kafka.sasl.mechanism", "required with a username or password: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
	} else if sa.Mechanism != "" {
		oneOf("forward.kafka.sasl.mechanism", sa.Mechanism, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
		if sa.Username == "" {
			bad("forward.kafka.sasl.username", "required with SASL")
		}
		switch {
		case sa.Password != "" && sa.PasswordFile != "":
			bad("forward.kafka.sasl.password_file", "cannot be set together with forward.kafka.sasl.password; use one")
		case sa.Password == "" && sa.PasswordFile == "":
			bad("forward.kafka.sasl.password", "required with SASL (or password_file; ${VAR} reads the environment)")
		}
		if sa.Mechanism == "PLAIN" && !k.TLS.Enabled {
			c.Warnings = append(c.Warnings, src.errorAt("forward.kafka.sasl.mechanism",
				"PLAIN without TLS sends the password in clear text").Error())
		}
	}

	if st := c.Forward.StatusTopic; st != "" {
		if msg := checkKafkaTopic(st, true); msg != "" {
			bad("forward.status_topic", "%s", msg)
		}
	}
	if c.Forward.StatusInterval < time.Second {
		bad("forward.status_interval", "must be 1s or more, got %v", c.Forward.StatusInterval)
	}
	if c.Forward.UnknownTopicTimeout < 0 {
		bad("forward.unknown_topic_timeout", "must be 0s (wait for ever) or more, got %v", c.Forward.UnknownTopicTimeout)
	}
	if c.Forward.LateAfter < 0 {
		bad("forward.late_after", "must be 0s (never) or more, got %v", c.Forward.LateAfter)
	}
	if r := c.Forward.MaxBytesPerSecond; r != 0 && (r < minBytesPerSecond || r > maxBytesPerSecond) {
		bad("forward.max_bytes_per_second", "must be 0 (no cap) or from %v to %v (bytes a second: 50KB, 256KiB), got %v", ByteSize(minBytesPerSecond), ByteSize(maxBytesPerSecond), r)
	}
	if len(c.Forward.Routes) == 0 {
		bad("forward.routes", "at least one route is required")
	} else if len(c.Forward.Routes) > maxRoutes {
		bad("forward.routes", "at most %d routes, got %d: use wildcards and {name} captures (sensors/{device}/telemetry)", maxRoutes, len(c.Forward.Routes))
	}
	routes := map[int]string{} // index of a valid route -> its filter ("#" for a default route)
	for i, r := range c.Forward.Routes {
		checkRoute(c, i, r, bad, routes)
	}

	// Subscriptions and routes that can never meet: every pair is
	// checked, so only within the bounds above.
	total := 0
	for _, m := range c.MQTT {
		total += len(m.Subscriptions)
	}
	if total > maxSubscriptions || len(c.Forward.Routes) > maxRoutes {
		return
	}
	warn := func(path, format string, args ...any) {
		c.Warnings = append(c.Warnings, src.errorAt(path, format, args...).Error())
	}
	// Routes match topics, so a shared subscription's filter part counts.
	plain := func(f string) string { _, p, _ := topic.SplitShared(f); return p }
	anyFilter := false
	for ci, m := range c.MQTT {
		p := mqttPath(src, ci)
		for i, s := range m.Subscriptions {
			if j, valid := filters[ci][s.Filter]; !valid || j != i {
				continue
			}
			anyFilter = true
			for j, o := range m.Subscriptions[:i] {
				if k, valid := filters[ci][o.Filter]; valid && k == j && topic.Overlap(plain(s.Filter), plain(o.Filter)) {
					warn(fmt.Sprintf("%s.subscriptions[%d].filter", p, i), "overlaps %s.subscriptions[%d].filter %q: a message matching both comes once through each (Mosquitto sends a copy per subscription), and is forwarded twice", p, j, o.Filter)
					break
				}
			}
			if len(routes) == 0 {
				continue
			}
			matched := false
			for ri, f := range routes {
				// A default route matches every topic, '$' ones too.
				matched = matched || c.Forward.Routes[ri].Default || topic.Overlap(plain(s.Filter), f)
			}
			if !matched {
				warn(fmt.Sprintf("%s.subscriptions[%d].filter", p, i), "no route matches any topic of %q", s.Filter)
			}
		}
	}
	for i, r := range c.Forward.Routes {
		f, valid := routes[i]
		if !valid {
			continue
		}
		if !r.Drop && strings.Contains(r.Topic, "{"+topic.RestName+"}") {
			warn(fmt.Sprintf("forward.routes[%d].topic", i), "{#} holds a '/' whenever it matched more than one level, which a Kafka topic name cannot: those records are dead-lettered (invalid_topic)")
		}
		for j := range c.Forward.Routes[:i] {
			// A default route still catches the '$' topics an earlier "#"
			// leaves: never shadowed.
			if g, ok := routes[j]; ok && topic.Covers(g, f) && !r.Default {
				warn(fmt.Sprintf("forward.routes[%d].match", i), "never used: forward.routes[%d] (match %q) comes first and matches every topic this route does", j, c.Forward.Routes[j].Match)
				break
			}
		}
		if !anyFilter || r.Default {
			continue
		}
		reached := false
		for _, fs := range filters {
			for s := range fs {
				reached = reached || topic.Overlap(plain(s), f)
			}
		}
		if !reached {
			warn(fmt.Sprintf("forward.routes[%d].match", i), "no subscription receives any topic of %q; the route is never used", r.Match)
		}
	}
}

// isTLSScheme reports whether an mqtt.url scheme connects over TLS.
func isTLSScheme(scheme string) bool {
	switch scheme {
	case "ssl", "tls", "mqtts", "wss":
		return true
	}
	return false
}

func checkMQTTURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		if ue, ok := err.(*url.Error); ok {
			err = ue.Err
		}
		return fmt.Sprintf("invalid URL %q: %v", RedactURL(s), err)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
	default:
		return fmt.Sprintf("scheme must be tcp, mqtt, ssl, tls, mqtts, ws or wss, got %q", RedactURL(s))
	}
	if u.User != nil {
		return "must not hold credentials; use mqtt.username and mqtt.password"
	}
	if msg := checkHostPort(u.Host); msg != "" {
		return fmt.Sprintf("must have a host and port, as in tcp://127.0.0.1:1883, got %q: %s", RedactURL(s), msg)
	}
	return ""
}

// plainTextPassword says why the MQTT broker at rawURL would receive
// mqtt.password in clear text, or "" if it would not: the scheme is not
// TLS and the host is not this one. Over loopback the password never
// leaves the host, where whoever can read the traffic (root) can read
// ferry's configuration too; a warning there, on every default install,
// would teach operators to ignore warnings.
func plainTextPassword(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return ""
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ws":
	default:
		return ""
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return ""
	}
	return host
}

// RedactURL returns s with the password of its userinfo, if any, replaced
// by "xxxxx", as url.URL.Redacted does, also when s does not parse as a
// URL (a typo such as "mqtts//user:password@host:8883" must not show the
// password in the error about it): whatever lies between the first ':'
// after the "//" (or the start) and the last '@' is taken for a password.
func RedactURL(s string) string {
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return s
	}
	start := 0
	if i := strings.Index(s[:at], "//"); i >= 0 {
		start = i + 2
	}
	colon := strings.IndexByte(s[start:at], ':')
	if colon < 0 {
		return s
	}
	return s[:start+colon+1] + "xxxxx" + s[at:]
}

func checkHostPort(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if ae, ok := err.(*net.AddrError); ok {
			return ae.Err
		}
		return err.Error()
	}
	if host == "" {
		return "missing host"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > math.MaxUint16 {
		return "port must be from 1 to 65535"
	}
	return ""
}

// checkKafkaTopic checks a Kafka topic template: its literal text may use
// only the characters Kafka allows, and a static one must be a valid name.
func checkKafkaTopic(s string, static bool) string {
	depth := 0
	for _, c := range s {
		switch {
		case c == '{':
			depth++
		case c == '}':
			depth--
		case depth == 0 && !(c == '.' || c == '_' || c == '-' ||
			'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'):
			return fmt.Sprintf("Kafka topic names may use only [a-zA-Z0-9._-], got %q in %q", c, s)
		}
	}
	if static && (s == "." || s == "..") {
		return fmt.Sprintf("%q is not a valid Kafka topic name", s)
	}
	if static && len(s) > 249 {
		return fmt.Sprintf("Kafka topic names are at most 249 characters, got %d", len(s))
	}
	return ""
}

// shortDuration formats d as time.Duration does, without zero minutes and
// seconds after hours: 1h, 36h30m.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func orList(items []string) string {
	if len(items) == 1 {
		return items[0]
	}
	return strings.Join(items[:len(items)-1], ", ") + " or " + items[len(items)-1]
}

// validateMQTT checks the connection m, at key path p, and returns its
// valid filters (filter -> index).
func validateMQTT(c *Config, src *source, m *MQTT, p string, bad func(path, format string, args ...any)) map[string]int {
	if m.URL == "" {
		bad(p+".url", "required, e.g. tcp://127.0.0.1:1883")
	} else if msg := checkMQTTURL(m.URL); msg != "" {
		bad(p+".url", "%s", msg)
	}
	if m.Password != "" && m.PasswordFile != "" {
		bad(p+".password_file", "cannot be set together with %s.password; use one", p)
	}
	if m.Password != "" || m.PasswordFile != "" {
		if host := plainTextPassword(m.URL); host != "" {
			which := p + ".password"
			if m.Password == "" {
				which = p + ".password_file's password"
			}
			scheme, _, _ := strings.Cut(m.URL, ":")
			c.Warnings = append(c.Warnings, src.errorAt(p+".url",
				"%s:// sends %s in clear text to %s, which is not this host: anyone on the network path can read it; use ssl://, mqtts:// or wss://", scheme, which, host).Error())
		}
	}
	seconds := func(path string, d, lo, hi time.Duration, why string) {
		switch {
		case d < lo || d > hi:
			bad(path, "must be from %ds to %ds%s, got %v", lo/time.Second, hi/time.Second, why, d)
		case d%time.Second != 0:
			bad(path, "must be a whole number of seconds, got %v", d)
		}
	}
	seconds(p+".keep_alive", m.KeepAlive, time.Second, math.MaxUint16*time.Second, "")
	seconds(p+".session_expiry", m.SessionExpiry, time.Second, math.MaxUint32*time.Second, " (ferry needs a persistent session)")
	if m.ConnectTimeout <= 0 {
		bad(p+".connect_timeout", "must be more than 0s, got %v", m.ConnectTimeout)
	}
	if m.ReceiveMaximum < 1 || m.ReceiveMaximum > math.MaxUint16 {
		bad(p+".receive_maximum", "must be from 1 to 65535, got %d", m.ReceiveMaximum)
	}
	if m.MaxPayloadBytes < minMaxPayloadBytes || m.MaxPayloadBytes > maxMaxPayloadBytes {
		bad(p+".max_payload_bytes", "must be from %v to %v, got %v", ByteSize(minMaxPayloadBytes), ByteSize(maxMaxPayloadBytes), m.MaxPayloadBytes)
	}
	if m.TLS != (MQTTTLS{}) {
		if scheme, _, _ := strings.Cut(m.URL, ":"); m.URL != "" && !isTLSScheme(scheme) {
			bad(p+".tls", "is set, but %s.url's scheme %s is not TLS: use ssl://, tls://, mqtts:// or wss://, or remove %s.tls", p, scheme, p)
		}
	}
	if (m.TLS.CertFile == "") != (m.TLS.KeyFile == "") {
		bad(p+".tls", "cert_file and key_file go together: set both for mutual TLS, or neither")
	}
	if m.TLS.InsecureSkipVerify {
		c.Warnings = append(c.Warnings, src.errorAt(p+".tls.insecure_skip_verify",
			"the MQTT broker's certificate is NOT verified: anyone on the path can read and change the data and learn the password; use only for tests").Error())
	}
	if len(m.Subscriptions) == 0 {
		bad(p+".subscriptions", "at least one subscription is required")
	} else if len(m.Subscriptions) > maxSubscriptions {
		bad(p+".subscriptions", "at most %d subscriptions, got %d: use wildcards (sensors/+/telemetry, sensors/#)", maxSubscriptions, len(m.Subscriptions))
	}
	filters := map[string]int{} // valid filter -> index
	for i, s := range m.Subscriptions {
		path := fmt.Sprintf("%s.subscriptions[%d]", p, i)
		if s.QoS < 0 || s.QoS > 2 {
			bad(path+".qos", "must be 0, 1 or 2, got %d", s.QoS)
		}
		if s.RetainHandling < 0 || s.RetainHandling > 2 {
			bad(path+".retain_handling", "must be 0 (retained messages at every subscribe), 1 (only for a new subscription) or 2 (never), got %d", s.RetainHandling)
		}
		if _, _, shared := topic.SplitShared(s.Filter); shared && s.NoLocal {
			bad(path+".no_local", "must be false on a shared subscription (MQTT forbids it)")
		}
		if s.Filter == "" {
			bad(path+".filter", "required")
		} else if err := topic.ValidSubscription(s.Filter); err != nil {
			bad(path+".filter", "%v", err)
		} else if j, dup := filters[s.Filter]; dup {
			bad(path+".filter", "duplicate of %s.subscriptions[%d].filter %q", p, j, s.Filter)
		} else {
			filters[s.Filter] = i
		}
	}
	return filters
}

// mqttPath is the key path of connection i: "mqtt" when the file gives
// one connection as a mapping, else "mqtt[i]".
func mqttPath(src *source, i int) string {
	if p := fmt.Sprintf("mqtt[%d]", i); src.isSet(p) || i > 0 {
		return p
	}
	return "mqtt"
}

// hostPort is the host:port of an MQTT URL, or "" if it has none.
func hostPort(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Host
}

// validName reports whether s can name an MQTT connection: it goes into a
// file name and a client id.
func validName(s string) bool {
	if len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:-[]", r)) {
			return false
		}
	}
	return true
}

// checkRoute checks route i, reporting with bad, and records its filter in
// filters when its match is valid.
func checkRoute(c *Config, i int, r Route, bad func(path, format string, args ...any), filters map[int]string) {
	path := fmt.Sprintf("forward.routes[%d]", i)
	var match *topic.Pattern
	ok := true
	switch {
	case r.Default && r.Match != "":
		bad(path+".match", "a default route matches every topic; it has no match")
		ok = false
	case r.Default && i != len(c.Forward.Routes)-1:
		bad(path+".default", "the default route must be the last route: the routes after it would never be used")
		ok = false
	case r.Default:
		filters[i] = "#"
	case r.Match == "":
		bad(path+".match", "required (or default: true for a route that matches every topic)")
		ok = false
	default:
		p, err := topic.ParsePattern(r.Match)
		switch {
		case err != nil:
			bad(path+".match", "%v", err)
			ok = false
		case slices.Contains(p.Names(), topic.GatewayName):
			bad(path+".match", "{%s} names the gateway id in templates; capture the level under another name", topic.GatewayName)
			ok = false
		default:
			match = p
			filters[i] = p.Filter()
		}
	}
	if r.Drop {
		for key, set := range map[string]bool{"topic": r.Topic != "", "key": r.Key != "", "headers": len(r.Headers) > 0, "format": r.Format != ""} {
			if set {
				bad(path+"."+key, "a route with drop: true forwards nothing; remove %s", key)
			}
		}
		return
	}
	names := topic.TemplateNames(match)
	if r.Topic == "" {
		bad(path+".topic", "required (or drop: true to drop what the route matches)")
	} else if t, err := topic.ParseTemplate(r.Topic, names); err != nil {
		if ok {
			bad(path+".topic", "%v", err)
		}
	} else if gw := strings.ReplaceAll(r.Topic, "{"+topic.GatewayName+"}", c.GatewayID); gw != r.Topic {
		// The gateway id is known now: a topic it makes invalid would
		// dead-letter every record.
		if msg := checkKafkaTopic(gw, !strings.Contains(gw, "{")); msg != "" {
			bad(path+".topic", "with gateway_id %q: %s", c.GatewayID, msg)
		}
	} else if msg := checkKafkaTopic(r.Topic, t.IsStatic()); msg != "" {
		bad(path+".topic", "%s", msg)
	}
	if r.Key != "" {
		if _, err := topic.ParseTemplate(r.Key, names); err != nil && ok {
			bad(path+".key", "%v", err)
		}
	}
	for _, h := range r.Headers {
		hp := path + ".headers." + h.Name
		switch {
		case h.Name == "":
			bad(hp, "a header needs a name")
		case strings.HasPrefix(h.Name, "ferry.") || strings.HasPrefix(h.Name, "mqtt."):
			bad(hp, "header names starting with ferry. or mqtt. are ferry's own")
		default:
			if _, err := topic.ParseTemplate(h.Value, names); err != nil && ok {
				bad(hp, "%v", err)
			}
		}
	}
	switch r.Format {
	case FormatRaw, FormatEnvelope:
	default:
		bad(path+".format", "must be %s or %s, got %q", FormatRaw, FormatEnvelope, r.Format)
	}
}
