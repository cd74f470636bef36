// Package forward reads records from the buffer, in order, and produces them
// to Kafka.
//
// Guarantee: a record leaves the buffer only after Kafka acknowledged it
// with acks=all (the producer is idempotent), and only as part of a
// contiguous prefix: if record n is not yet acknowledged, nothing after it
// is released either. Records with the same key go to the same partition in
// buffer order; the producer never fails one record of a partition while
// delivering a later one. When Kafka is unreachable or refuses a produce,
// the forwarder keeps retrying with capped, jittered backoff and the buffer
// grows; every record not acknowledged is produced again (duplicates are
// possible, loss and reordering of first deliveries are not). When Kafka
// comes back the backlog drains at full speed.
//
// Each record is routed by the first route whose pattern matches its MQTT
// topic. A record that matches no route is counted and dropped with a
// warning. A record too large to be produced, or one Kafka rejects for good
// (too large for the topic, invalid, refused by policy: found by sending it
// alone after its batch failed), is quarantined in the buffer, counted and
// logged, and forwarding goes on. Record value = the MQTT payload
// unchanged; key and topic from the route; timestamp = when ferry received
// the message; headers carry the MQTT topic, the gateway id and the
// message's MQTT properties.
package forward

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/topic"
)

// Source is where records come from: *buffer.Buffer.
type Source interface {
	// Read returns records with sequence numbers above after, in order,
	// waiting until there is at least one.
	Read(ctx context.Context, after uint64, maxRecords, maxBytes int, dst []buffer.Record) ([]buffer.Record, error)
	// Release removes every record up to and including seq.
	Release(seq uint64)
	// DeadLetter moves a record that can never be delivered aside.
	DeadLetter(seq uint64, reason buffer.Reason, detail error)
	// Stats reports the buffer's counters, for the status record.
	Stats() buffer.Stats
}

// Header names set on every Kafka record.
const (
	HeaderMQTTTopic       = "mqtt.topic"
	HeaderGateway         = "ferry.gateway_id"
	HeaderQoS             = "mqtt.qos"
	HeaderContentType     = "mqtt.content_type"
	HeaderResponseTopic   = "mqtt.response_topic"
	HeaderCorrelationData = "mqtt.correlation_data"
	HeaderPayloadFormat   = "mqtt.payload_format" // "utf-8" when the publisher said so
)

// Route sends records whose MQTT topic matches Match to Topic, keyed by Key.
type Route struct {
	Match *topic.Pattern
	Topic *topic.Template
	Key   *topic.Template // nil: no key
}

// Config says where and how to produce.
type Config struct {
	Brokers   []string
	ClientID  string
	GatewayID string
	Routes    []Route
	// Compression: none, gzip, snappy, lz4 or zstd. Default none.
	Compression string
	// Linger is how long a partition waits for more records before a
	// produce request. Default 0.
	Linger time.Duration
	// MaxBufferedRecords bounds the records read from the buffer and not yet
	// acknowledged by Kafka. Default 10000.
	MaxBufferedRecords int
	// MaxRecordBytes is the largest record value+key+headers the producer
	// sends; larger ones are quarantined. Default 1,000,000 (Kafka's
	// default message.max.bytes less overhead).
	MaxRecordBytes int
	DialTimeout    time.Duration
	TLS            *tls.Config    // nil: plaintext
	SASL           sasl.Mechanism // nil: no authentication
	// AllowAutoTopicCreation asks the cluster to create missing topics.
	// Without it a missing topic fails its records after a few metadata
	// retries; they stay in the buffer and are retried with backoff.
	AllowAutoTopicCreation bool
	// ShutdownTimeout is how long Run waits at shutdown for records in
	// flight to be acknowledged. Default 10s.
	ShutdownTimeout time.Duration
	// StallTimeout is how long records may wait in flight with no
	// acknowledgement before forwarding reports an error (a silent uplink
	// shows no connection error). Default 5s.
	StallTimeout time.Duration
	Logger       *slog.Logger
	// StatusTopic receives a Status record (JSON, keyed by gateway id)
	// every StatusInterval and soon after records are dropped by a limit;
	// "" turns it off.
	StatusTopic    string
	StatusInterval time.Duration // default 1m
	// ExtraOpts are appended to the client options (tests use them to
	// shorten retry timings).
	ExtraOpts []kgo.Opt
}

// Stats are forwarding counters since Run started.
type Stats struct {
	Delivered   uint64 // records Kafka acknowledged
	Unrouted    uint64 // records that matched no route and were dropped
	Quarantined uint64 // records set aside as undeliverable
	Retries     uint64 // times forwarding restarted after an error
	InFlight    int    // records produced and not yet acknowledged
	LastError   string // the error forwarding is retrying, "" when healthy
}

// Forwarder moves records from a Source to Kafka.
type Forwarder struct {
	cfg Config
	src Source
	log *slog.Logger

	delivered, unrouted, quarantined, retries atomic.Uint64
	inflight                                  atomic.Int64
	lastAck                                   atomic.Int64 // unix nanos of the last acknowledgement
	lastErr                                   atomic.Value // string
	lastKey                                   atomic.Value // string: errKey of lastErr
	statusErr                                 atomic.Value // string: errKey of the last status send failure
}

// New checks cfg and returns a Forwarder ready to Run.
func New(cfg Config, src Source) (*Forwarder, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("forward: no Kafka brokers")
	}
	if len(cfg.Routes) == 0 {
		return nil, errors.New("forward: no routes")
	}
	if cfg.MaxBufferedRecords <= 0 {
		cfg.MaxBufferedRecords = 10000
	}
	if cfg.MaxRecordBytes <= 0 {
		cfg.MaxRecordBytes = 1_000_000
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = time.Minute
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if _, err := compression(cfg.Compression); err != nil {
		return nil, err
	}
	f := &Forwarder{cfg: cfg, src: src, log: cfg.Logger.With("component", "forward")}
	f.lastErr.Store("")
	f.lastKey.Store("")
	f.statusErr.Store("")
	return f, nil
}

func compression(name string) (kgo.CompressionCodec, error) {
	switch name {
	case "", "none":
		return kgo.NoCompression(), nil
	case "gzip":
		return kgo.GzipCompression(), nil
	case "snappy":
		return kgo.SnappyCompression(), nil
	case "lz4":
		return kgo.Lz4Compression(), nil
	case "zstd":
		return kgo.ZstdCompression(), nil
	}
	return kgo.CompressionCodec{}, fmt.Errorf("forward: unknown compression %q (want none, gzip, snappy, lz4 or zstd)", name)
}

// Stats returns the forwarding counters.
func (f *Forwarder) Stats() Stats {
	return Stats{
		Delivered:   f.delivered.Load(),
		Unrouted:    f.unrouted.Load(),
		Quarantined: f.quarantined.Load(),
		Retries:     f.retries.Load(),
		InFlight:    int(f.inflight.Load()),
		LastError:   f.lastErr.Load().(string),
	}
}

// Run forwards until ctx is done, then waits up to ShutdownTimeout for the
// records in flight, closes the producer and returns nil. Errors from Kafka
// are retried, not returned; Run returns an error only if the source fails.
func (f *Forwarder) Run(ctx context.Context) error {
	codec, _ := compression(f.cfg.Compression)
	opts := []kgo.Opt{
		kgo.SeedBrokers(f.cfg.Brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(codec),
		kgo.ProducerLinger(f.cfg.Linger),
		kgo.MaxBufferedRecords(f.cfg.MaxBufferedRecords + 16), // room for status records beside a full window
		kgo.DialTimeout(f.cfg.DialTimeout),
		kgo.RetryBackoffFn(backoff(100*time.Millisecond, 5*time.Second)),
		kgo.WithHooks(hooks{f}),
		// A record that passes the MaxRecordBytes check always fits a batch,
		// overhead included, and stays under Kafka's default 1 MiB limit.
		kgo.ProducerBatchMaxBytes(int32(f.cfg.MaxRecordBytes + batchOverhead)),
	}
	if f.cfg.ClientID != "" {
		opts = append(opts, kgo.ClientID(f.cfg.ClientID))
	}
	if f.cfg.TLS != nil {
		opts = append(opts, kgo.DialTLSConfig(f.cfg.TLS))
	}
	if f.cfg.SASL != nil {
		opts = append(opts, kgo.SASL(f.cfg.SASL))
	}
	if f.cfg.AllowAutoTopicCreation {
		opts = append(opts, kgo.AllowAutoTopicCreation())
	}
	opts = append(opts, f.cfg.ExtraOpts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return fmt.Errorf("forward: kafka client: %w", err)
	}
	// The helpers stop with ctx; the client is closed before waiting for
	// them, which fails a status record a silent broker would hold forever.
	helpers := sync.WaitGroup{}
	helperCtx, stopHelpers := context.WithCancel(ctx)
	defer func() {
		stopHelpers()
		cl.Close()
		helpers.Wait()
	}()
	helpers.Go(func() { f.watch(helperCtx) })
	if f.cfg.StatusTopic != "" {
		helpers.Go(func() { f.reportStatus(helperCtx, cl) })
	}

	var after uint64 // 0: start at the buffer's head
	isolate := false
	wait := backoff(250*time.Millisecond, 30*time.Second)
	for attempt := 0; ; {
		next, err := f.pass(ctx, cl, after, isolate)
		if next > after {
			after = next
			attempt = 0
		}
		// After a rejection that retrying cannot cure, the next pass sends
		// the first record alone, to tell the bad record from the batch it
		// failed with: alone and rejected again, it is quarantined.
		isolate = permanent(err)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errSource) {
			return err
		}
		if err == nil {
			continue // a pass ends without error only when ctx is done; be safe
		}
		// A produce failed: everything from the first record Kafka did not
		// acknowledge is read and produced again after a pause.
		attempt++
		f.retries.Add(1)
		f.setError(err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait(attempt)):
		}
	}
}

var errSource = errors.New("read buffer")

// batchOverhead is room for Kafka's batch and record headers beside
// MaxRecordBytes of key, value and headers.
const batchOverhead = 16 << 10

// permanent reports whether Kafka rejected a record in a way that retrying
// the same record cannot change. Everything else (network, leadership,
// unknown topic, authorization, quotas) is retried.
func permanent(err error) bool {
	for _, e := range []error{kerr.MessageTooLarge, kerr.RecordListTooLarge, kerr.InvalidRecord,
		kerr.CorruptMessage, kerr.InvalidTimestamp, kerr.PolicyViolation} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// pass produces records after seq `after` until a produce fails or ctx is
// done. With isolate, the first record is produced alone and quarantined if
// Kafka rejects it for good. It returns the highest sequence number
// released.
func (f *Forwarder) pass(ctx context.Context, cl *kgo.Client, after uint64, isolate bool) (uint64, error) {
	passCtx, stop := context.WithCancel(ctx)
	defer stop()
	w := newWindow(f.cfg.MaxBufferedRecords, f.src, stop)
	w.released = after

	maxRead := min(f.cfg.MaxBufferedRecords, 1000)
	var recs []buffer.Record
	var vals []string
	var readErr error
	for passCtx.Err() == nil {
		space := w.waitSpace(passCtx)
		if space == 0 {
			break
		}
		recs, readErr = f.src.Read(passCtx, after, min(space, maxRead), 16<<20, recs)
		if readErr != nil {
			if passCtx.Err() == nil {
				readErr = fmt.Errorf("%w: %w", errSource, readErr)
				break
			}
			readErr = nil
		}
		for i := range recs {
			rec := &recs[i]
			var kr *kgo.Record
			kr, vals = f.route(rec, vals)
			idx, ok := w.push(rec.Seq)
			if !ok {
				break // the pass failed: nothing more may go out behind the failure
			}
			after = rec.Seq
			switch {
			case kr == nil:
				n := f.unrouted.Add(1)
				if n&(n-1) == 0 { // 1, 2, 4, 8, ...: rate-limited
					f.log.Warn("record matches no route; dropped", "mqtt_topic", rec.Topic, "seq", rec.Seq, "dropped_total", n)
				}
				w.settle(idx, nil)
			case recordSize(kr) > f.cfg.MaxRecordBytes:
				f.quarantine(rec, fmt.Errorf("record of %d bytes exceeds the %d-byte limit", recordSize(kr), f.cfg.MaxRecordBytes))
				w.settle(idx, nil)
			case isolate:
				isolate = false
				err := cl.ProduceSync(passCtx, kr).FirstErr()
				if permanent(err) {
					f.quarantine(rec, fmt.Errorf("Kafka rejected it when sent alone: %w", err))
					err = nil
				} else if err == nil {
					f.delivered.Add(1)
					f.clearError()
				} else {
					err = fmt.Errorf("produce to Kafka topic %q: %w", kr.Topic, err)
				}
				w.settle(idx, err)
			default:
				if f.inflight.Add(1) == 1 {
					f.lastAck.Store(time.Now().UnixNano()) // the wait starts now
				}
				cl.Produce(context.Background(), kr, func(kr *kgo.Record, err error) {
					f.inflight.Add(-1)
					if err == nil {
						f.delivered.Add(1)
						f.lastAck.Store(time.Now().UnixNano())
						f.clearError()
					} else {
						err = fmt.Errorf("produce to Kafka topic %q: %w", kr.Topic, err)
					}
					w.settle(idx, err)
				})
			}
		}
	}

	// Wait for what is in flight: at shutdown for a bounded time, after a
	// failure until the producer has settled every record (it retries
	// retriable errors on its own; the rest fail the partition's records).
	if ctx.Err() != nil {
		fctx, cancel := context.WithTimeout(context.Background(), f.cfg.ShutdownTimeout)
		defer cancel()
		if err := cl.Flush(fctx); err != nil {
			f.log.Warn("records still in flight at shutdown; they stay in the buffer", "in_flight", f.inflight.Load())
		}
		return w.releasedSeq(), nil
	}
	if !w.waitSettled(ctx) { // stopping meanwhile: a bounded wait, as above
		fctx, cancel := context.WithTimeout(context.Background(), f.cfg.ShutdownTimeout)
		defer cancel()
		cl.Flush(fctx)
		return w.releasedSeq(), nil
	}
	if readErr != nil {
		return w.releasedSeq(), readErr
	}
	return w.releasedSeq(), w.failure()
}

// watch reports a stall: records in flight and no acknowledgement for
// StallTimeout, which is all a silent uplink shows.
func (f *Forwarder) watch(ctx context.Context) {
	t := time.NewTicker(f.cfg.StallTimeout / 5)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n := f.inflight.Load()
			since := time.Since(time.Unix(0, f.lastAck.Load()))
			if n > 0 && since >= f.cfg.StallTimeout {
				f.setError(fmt.Errorf("%w: %d records in flight, none acknowledged for %v", errStalled, n, since.Truncate(time.Second)))
			}
		}
	}
}

// errStalled marks the error watch reports.
var errStalled = errors.New("Kafka is not acknowledging")

// quarantine sets a record Kafka will never take aside, counted and logged.
func (f *Forwarder) quarantine(rec *buffer.Record, reason error) {
	f.quarantined.Add(1)
	f.src.DeadLetter(rec.Seq, buffer.Reason("rejected"), reason)
}

// setError records the problem forwarding is retrying, logging it when it
// changes.
func (f *Forwarder) setError(err error) {
	f.lastErr.Store(err.Error())
	if key := errKey(err); f.lastKey.Swap(key) != key {
		f.log.Error("cannot deliver to Kafka; retrying with backoff, records wait in the buffer", "err", err)
	}
}

// errKey is err's text without what changes on every attempt (the local
// port of a connection), so a repeated failure is logged once.
func errKey(err error) string {
	if errors.Is(err, errStalled) {
		return errStalled.Error()
	}
	var op *net.OpError
	if errors.As(err, &op) {
		c := *op
		c.Source = nil
		return c.Error()
	}
	return err.Error()
}

// clearError notes that Kafka acknowledged records, logging the recovery.
func (f *Forwarder) clearError() {
	if f.lastErr.Load().(string) != "" && f.lastErr.Swap("") != "" {
		f.lastKey.Store("")
		f.log.Info("Kafka is accepting records again")
	}
}

// hooks watch the producer's connections, so an unreachable Kafka shows in
// the log and in Stats even while the producer retries on its own.
type hooks struct{ f *Forwarder }

func (h hooks) OnBrokerConnect(meta kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil {
		h.f.setError(fmt.Errorf("connect to Kafka broker %s: %w", net.JoinHostPort(meta.Host, strconv.Itoa(int(meta.Port))), err))
	}
}

// route builds the Kafka record for rec, or returns nil if no route
// matches. vals is scratch space for captures.
func (f *Forwarder) route(rec *buffer.Record, vals []string) (*kgo.Record, []string) {
	for i := range f.cfg.Routes {
		r := &f.cfg.Routes[i]
		var ok bool
		vals, ok = r.Match.Match(rec.Topic, vals)
		if !ok {
			continue
		}
		kr := &kgo.Record{
			Topic:     r.Topic.Expand(vals),
			Value:     rec.Payload,
			Timestamp: rec.ReceivedAt,
			Headers:   make([]kgo.RecordHeader, 0, 3+len(rec.UserProperties)),
		}
		if r.Key != nil {
			kr.Key = []byte(r.Key.Expand(vals))
		}
		h := kr.Headers
		h = append(h,
			kgo.RecordHeader{Key: HeaderMQTTTopic, Value: []byte(rec.Topic)},
			kgo.RecordHeader{Key: HeaderGateway, Value: []byte(f.cfg.GatewayID)},
			kgo.RecordHeader{Key: HeaderQoS, Value: []byte(strconv.Itoa(int(rec.QoS)))},
		)
		if rec.ContentType != "" {
			h = append(h, kgo.RecordHeader{Key: HeaderContentType, Value: []byte(rec.ContentType)})
		}
		if rec.ResponseTopic != "" {
			h = append(h, kgo.RecordHeader{Key: HeaderResponseTopic, Value: []byte(rec.ResponseTopic)})
		}
		if rec.CorrelationData != nil {
			h = append(h, kgo.RecordHeader{Key: HeaderCorrelationData, Value: rec.CorrelationData})
		}
		if rec.PayloadUTF8 {
			h = append(h, kgo.RecordHeader{Key: HeaderPayloadFormat, Value: []byte("utf-8")})
		}
		for _, p := range rec.UserProperties {
			h = append(h, kgo.RecordHeader{Key: p.Key, Value: []byte(p.Value)})
		}
		kr.Headers = h
		return kr, vals
	}
	return nil, vals
}

func recordSize(r *kgo.Record) int {
	n := len(r.Key) + len(r.Value) + len(r.Topic)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// backoff returns a jittered exponential backoff from lo, doubling, capped
// at hi.
func backoff(lo, hi time.Duration) func(int) time.Duration {
	return func(attempt int) time.Duration {
		d := lo
		for i := 1; i < attempt && d < hi; i++ {
			d *= 2
		}
		d = min(d, hi)
		return d/2 + rand.N(d/2+1)
	}
}

// window tracks the records of one pass from read to acknowledgement and
// releases the acknowledged prefix from the source.
type window struct {
	src    Source
	onFail func()

	mu       sync.Mutex
	cond     *sync.Cond
	slots    []slot
	head     uint64 // index of the oldest unreleased slot
	tail     uint64 // index of the next slot to push
	settled  uint64 // slots settled this pass
	released uint64 // highest sequence number released
	err      error  // first produce error of the pass
}

type slot struct {
	seq     uint64
	settled bool
	ok      bool
}

func newWindow(size int, src Source, onFail func()) *window {
	w := &window{src: src, onFail: onFail, slots: make([]slot, size)}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// lockUntil locks the window and arranges for ctx's end to wake its
// waiters; the returned function undoes both.
func (w *window) lockUntil(ctx context.Context) (unlock func()) {
	stop := context.AfterFunc(ctx, func() {
		w.mu.Lock()
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	w.mu.Lock()
	return func() {
		w.mu.Unlock()
		stop()
	}
}

// waitSpace waits until a slot is free and returns how many are, or 0 if
// ctx is done or the pass failed.
func (w *window) waitSpace(ctx context.Context) int {
	defer w.lockUntil(ctx)()
	for {
		if ctx.Err() != nil || w.err != nil {
			return 0
		}
		if free := len(w.slots) - int(w.tail-w.head); free > 0 {
			return free
		}
		w.cond.Wait()
	}
}

// push adds seq to the window; false once the pass has failed.
func (w *window) push(seq uint64) (uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, false
	}
	idx := w.tail
	w.slots[idx%uint64(len(w.slots))] = slot{seq: seq}
	w.tail++
	return idx, true
}

func (w *window) settle(idx uint64, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := &w.slots[idx%uint64(len(w.slots))]
	s.settled, s.ok = true, err == nil
	w.settled++
	if err != nil && w.err == nil {
		w.err = err
		w.onFail()
	}
	var rel uint64
	for w.head < w.tail {
		h := &w.slots[w.head%uint64(len(w.slots))]
		if !h.settled || !h.ok {
			break
		}
		rel = h.seq
		w.head++
	}
	if rel > 0 {
		w.released = rel
		w.src.Release(rel)
	}
	w.cond.Broadcast()
}

// waitSettled waits until every pushed record is settled; false if ctx
// ended first.
func (w *window) waitSettled(ctx context.Context) bool {
	defer w.lockUntil(ctx)()
	for w.settled < w.tail {
		if ctx.Err() != nil {
			return false
		}
		w.cond.Wait()
	}
	return true
}

func (w *window) failure() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *window) releasedSeq() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.released
}
