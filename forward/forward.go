// Package forward reads records from the buffer, in order, and produces them
// to Kafka.
//
// Delivery: a record leaves the buffer (Release) only after Kafka
// acknowledged it with acks=all from the idempotent producer, or after it
// was dead-lettered, and only as part of a contiguous prefix: if record n is
// still waiting, nothing after it is released either.
//
// Order: records are produced in chunks. A chunk is the records waiting in
// the window (bounded by MaxBufferedRecords and MaxBufferedBytes), at most
// half of it, produced with franz-go's manual flushing: nothing of a chunk
// goes on the wire until all of it is buffered in the client, and the next
// chunk is produced only once every record of this one has its outcome. franz-go sends a
// partition's records in order and, when Kafka refuses a batch for good,
// fails that batch and every later one of the partition together; so
// within a chunk each partition ends with an acknowledged prefix and a
// failed suffix, and a failed record is always produced again before any
// record behind it. Records are partitioned by key, and without a key by
// their MQTT topic, so a record produced again goes to the same partition.
// Result: for every partition, first occurrences reach Kafka in buffer
// order, whatever Kafka answers.
//
// Retries and duplicates: franz-go retries everything retriable itself
// (network errors, a silent or restarting broker, leadership changes,
// timeouts), for as long as it takes, and its idempotent producer makes
// those retries land once. The forwarder never produces a record again
// while franz-go still holds it: a silent uplink is reported (Stats,
// the log) and waited for, never abandoned. A record is produced again only
// after franz-go failed it for good, which means Kafka did not write it.
// So without a crash ferry creates no duplicates. After a crash, or a stop
// that could not wait for Kafka's answer, the records whose outcome was
// unknown are produced again; each carries the same identity headers
// (HeaderGateway, HeaderBufferID, HeaderSeq) both times.
//
// What is never delivered: a record that matches no route is counted and
// dropped with a warning. A record Kafka refuses for good (too large,
// invalid, refused topic; see classify) is found by producing the failed
// batch in parts (galloping, then halving: about 2·log2 of its position in
// chunks) and dead-lettered in the buffer with its reason: kept, counted,
// replayable. Records Kafka acknowledged behind one that still waits are
// removed from the buffer one by one (Source.Remove), so they are not sent
// again after a restart. Records are partitioned the same way each time as
// long as the topic's partition count does not change. A route that makes an
// invalid topic name is caught before producing and dead-lettered at once.
// Records for a topic that does not exist wait (other topics go on) and are
// dead-lettered after UnknownTopicTimeout. Everything else is retried with
// capped, jittered backoff: the records wait in the buffer, which grows.
//
// Record value = the MQTT payload unchanged; key and topic from the route;
// timestamp = when ferry received the message; headers carry the MQTT
// topic, the gateway id, the record's identity and its MQTT properties.
package forward

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"

	"github.com/ferry-edge/ferry/buffer"
)

// Source is where records come from: *buffer.Buffer.
type Source interface {
	// Read returns records with sequence numbers above after, in order, at
	// most maxRecords and about maxBytes of them, waiting until there is
	// at least one (with ctx done already: what is there, no wait).
	Read(ctx context.Context, after uint64, maxRecords, maxBytes int, dst []buffer.Record) ([]buffer.Record, error)
	// Release removes every record up to and including seq.
	Release(seq uint64)
	// Remove removes records delivered while an earlier one waits.
	Remove(seqs ...uint64)
	// DeadLetter moves a record that can never be delivered aside, before
	// any later Release.
	DeadLetter(seq uint64, reason buffer.Reason, detail error)
	// ID names the source's log; with a record's Seq it identifies the
	// record for good.
	ID() string
	// Stats reports the buffer's counters, for the status record.
	Stats() buffer.Stats
}

// Config says where and how to produce.
type Config struct {
	Brokers   []string
	ClientID  string
	GatewayID string
	Routes    []Route
	// Compression: none, gzip, snappy, lz4 or zstd. Default none
	// (ferry's configuration defaults to zstd).
	Compression string
	// MaxBatchBytes is the largest record batch produced (Kafka's
	// max.message.bytes for the topics). Default MaxRecordBytes plus
	// room for the batch's overhead (16 KiB); given without
	// MaxRecordBytes, it sets MaxRecordBytes to what fits, and a smaller
	// value than MaxRecordBytes needs lowers MaxRecordBytes to fit.
	MaxBatchBytes int
	// Linger is how long the forwarder waits for more records before it
	// produces a chunk that does not fill the window. Default 0: produce
	// what there is; records that arrive meanwhile go with the next chunk.
	Linger time.Duration
	// MaxBufferedRecords and MaxBufferedBytes bound the window: the records
	// read from the buffer and not yet released. A chunk is at most half
	// of it, so the next chunk is read while one is in flight; over a slow
	// link a chunk costs one round trip, so a larger window drains faster.
	// Within these bounds the window is sized to the link (see
	// linkWindow): 2,000 records and 2 MiB where produce round trips are
	// short (loopback, most LANs), these bounds from 25 ms (at the
	// defaults). Memory use is about the window's bytes plus some 700
	// bytes per record. While Kafka does not answer (not reached yet,
	// unreachable, not acknowledging), and while a failed chunk waits for
	// its retry, the window is bounded by 1,000 records and 1 MiB instead
	// (or these bounds, if lower): a full window would only wait, in
	// memory. What it held when Kafka stopped answering stays. A single
	// record larger than MaxBufferedBytes is still forwarded, alone.
	// Defaults 20,000 and 16 MiB.
	MaxBufferedRecords int
	MaxBufferedBytes   int
	// LateAfter: a record read from the buffer to be produced more than
	// LateAfter after it was received carries HeaderLate. Default 1m;
	// negative: never.
	LateAfter time.Duration
	// MaxRecordBytes is the largest record (value, key, topic and headers)
	// the forwarder produces; larger ones are dead-lettered
	// (ReasonTooLarge). Default 1,000,000 (Kafka's default
	// message.max.bytes less overhead).
	MaxRecordBytes int
	DialTimeout    time.Duration  // default 10s
	TLS            *tls.Config    // nil: plaintext
	SASL           sasl.Mechanism // nil: no authentication
	// AllowAutoTopicCreation asks the cluster to create missing topics.
	AllowAutoTopicCreation bool
	// UnknownTopicTimeout is how long records wait for a topic that does
	// not exist before they are dead-lettered (ReasonUnknownTopic); records
	// of other topics go on meanwhile, as far as the window allows.
	// Default 1m; negative: wait for ever.
	UnknownTopicTimeout time.Duration
	// ShutdownTimeout is how long Run waits at shutdown for records in
	// flight to be acknowledged. Default 10s.
	ShutdownTimeout time.Duration
	// StallTimeout is how long records may wait in flight with no
	// acknowledgement before forwarding reports an error (a silent uplink
	// shows no connection error). They stay with the producer, which
	// keeps retrying. Default 5s.
	StallTimeout time.Duration
	Logger       *slog.Logger
	// StatusTopic receives a Status record (JSON, keyed by gateway id)
	// every StatusInterval and soon after records are dropped or
	// dead-lettered or a connection's state changes; "" turns it off. It
	// is produced by a client of its own, so it never holds up the data.
	StatusTopic    string
	StatusInterval time.Duration // default 1m
	// Version is ferry's version, told in the status record.
	Version string
	// Ingest, if set, tells the status record what the MQTT side lost
	// and the state of its connections (see IngestStatus).
	Ingest func() IngestStatus
	// MaxBytesPerSecond caps what the forwarder writes to Kafka, for
	// metered links: the produce requests as they go on the wire (after
	// compression; TCP/IP and TLS framing not counted), metadata and the
	// status record's requests included. It is a token bucket charged
	// with what was written (see ratelimit.go): over any 10 s of a backlog
	// drain the bytes stay within 10% of the cap. Chunks are then at most
	// about half a second of it; a record larger than that goes alone.
	// Stats.RateLimited and the log say when the cap is what limits
	// forwarding. Default 0: no cap.
	MaxBytesPerSecond int
	// Observers are franz-go hooks (kgo.Hook: connections, produce
	// requests) added to the data client, for metrics. They observe; no
	// hook can change what is produced or how it is acknowledged.
	Observers []kgo.Hook
}

// Stats are forwarding counters since Run started.
type Stats struct {
	Delivered uint64 // records Kafka acknowledged
	Unrouted  uint64 // records that matched no route and were dropped
	// DroppedByRoute counts records a route with Drop dropped.
	DroppedByRoute uint64
	// DeadLettered counts records set aside as undeliverable, by reason.
	DeadLettered map[buffer.Reason]uint64
	Chunks       uint64 // chunks produced
	Retries      uint64 // chunks produced again after a failure
	InFlight     int    // records produced and not yet answered
	LastError    string // the error forwarding is retrying, "" when healthy
	// RateLimited is true while MaxBytesPerSecond is what holds records
	// back: the cap delayed a chunk within the last 5 seconds.
	RateLimited bool
}

// Forwarder moves records from a Source to Kafka.
type Forwarder struct {
	cfg      Config
	src      Source
	log      *slog.Logger
	gateway  []byte
	bufferID []byte
	started  time.Time  // New's time, for the status record's uptime
	kafka    *kafkaLink // the status record's Kafka state
	rtt      roundTrips // the data path's produce round trips, for the window (see linkWindow)

	delivered, unrouted, droppedByRoute, chunks, retries atomic.Uint64
	inflight, parkedTopics                               atomic.Int64
	lastAck                                              atomic.Int64 // monoNow of the last acknowledgement
	lastErr                                              atomic.Value // string
	lastKey                                              atomic.Value // string: errKey of lastErr
	statusErr                                            atomic.Value // string: errKey of the last status send failure

	deadMu sync.Mutex
	dead   map[buffer.Reason]uint64

	routes    atomic.Pointer[[]Route] // cfg.Routes, or what SetRoutes set since
	routesGen atomic.Uint64           // SetRoutes calls

	rate *rateCap // nil: no MaxBytesPerSecond
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
		cfg.MaxBufferedRecords = 20000
	}
	if cfg.MaxBufferedBytes <= 0 {
		cfg.MaxBufferedBytes = 16 << 20
	}
	switch {
	case cfg.MaxBatchBytes > 0 && cfg.MaxBatchBytes < 2*batchOverhead:
		return nil, fmt.Errorf("forward: MaxBatchBytes %d is below %d", cfg.MaxBatchBytes, 2*batchOverhead)
	case cfg.MaxBatchBytes > 0 && cfg.MaxRecordBytes <= 0:
		cfg.MaxRecordBytes = cfg.MaxBatchBytes - batchOverhead
	case cfg.MaxRecordBytes <= 0:
		cfg.MaxRecordBytes = 1_000_000
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = cfg.MaxRecordBytes + batchOverhead
	}
	cfg.MaxRecordBytes = min(cfg.MaxRecordBytes, cfg.MaxBatchBytes-batchOverhead)
	if cfg.LateAfter == 0 {
		cfg.LateAfter = time.Minute
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.UnknownTopicTimeout == 0 {
		cfg.UnknownTopicTimeout = time.Minute
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
	f := &Forwarder{
		cfg: cfg, src: src, log: cfg.Logger.With("component", "forward"),
		gateway: []byte(cfg.GatewayID), bufferID: []byte(src.ID()),
		dead:    map[buffer.Reason]uint64{},
		started: time.Now(), kafka: newKafkaLink(),
	}
	if cfg.MaxBytesPerSecond > 0 {
		f.rate = newRateCap(cfg.MaxBytesPerSecond, time.Now())
	}
	f.lastErr.Store("")
	f.lastKey.Store("")
	f.statusErr.Store("")
	if err := f.SetRoutes(cfg.Routes); err != nil {
		return nil, err
	}
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
		// zstd's fastest level: on telemetry it compresses as well as
		// its default level (25 against 26 wire bytes per 200-byte JSON
		// record, BenchmarkCompression) for less CPU.
		return kgo.ZstdCompression().WithLevel(int(zstd.SpeedFastest)), nil
	}
	return kgo.CompressionCodec{}, fmt.Errorf("forward: unknown compression %q (want none, gzip, snappy, lz4 or zstd)", name)
}

// Stats returns the forwarding counters.
func (f *Forwarder) Stats() Stats {
	f.deadMu.Lock()
	dead := maps.Clone(f.dead)
	f.deadMu.Unlock()
	return Stats{
		Delivered:      f.delivered.Load(),
		Unrouted:       f.unrouted.Load(),
		DroppedByRoute: f.droppedByRoute.Load(),
		DeadLettered:   dead,
		Chunks:         f.chunks.Load(),
		Retries:        f.retries.Load(),
		InFlight:       int(f.inflight.Load()),
		LastError:      f.lastErr.Load().(string),
		RateLimited:    f.rateCapped(),
	}
}

// batchOverhead is room for Kafka's batch and record headers beside
// MaxRecordBytes of key, value and headers.
const batchOverhead = 16 << 10

// clientOpts are the options both clients share: where Kafka is, how to
// reach it, and what every produce must be (acks=all, idempotent, the
// default; nothing here turns either off).
func (f *Forwarder) clientOpts() []kgo.Opt {
	codec, _ := compression(f.cfg.Compression)
	opts := []kgo.Opt{
		kgo.SeedBrokers(f.cfg.Brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(codec),
		kgo.RetryBackoffFn(backoff(100*time.Millisecond, 5*time.Second)),
		// A record that passes the MaxRecordBytes check always fits a
		// batch, overhead included.
		kgo.ProducerBatchMaxBytes(int32(f.cfg.MaxBatchBytes)),
		// No KIP-714 client metrics: a push compresses them with a
		// codec the broker picks, and lz4's is two 4 MiB blocks, 8 MB
		// of heap at every push of each client (kfake and Kafka 3.7+
		// with a metrics plugin ask for them), more than the whole
		// window of a drain at a small window size.
		kgo.DisableClientMetrics(),
	}
	if f.cfg.ClientID != "" {
		opts = append(opts, kgo.ClientID(f.cfg.ClientID))
	}
	opts = append(opts, kgo.Dialer(f.dial))
	if f.cfg.SASL != nil {
		opts = append(opts, kgo.SASL(f.cfg.SASL))
	}
	if f.cfg.AllowAutoTopicCreation {
		opts = append(opts, kgo.AllowAutoTopicCreation())
	}
	if f.rate != nil {
		opts = append(opts, kgo.WithHooks(f.rate)) // both clients' writes count against the cap
	}
	return opts
}

// Run forwards until ctx is done, then waits up to ShutdownTimeout for the
// records in flight, closes the producer and returns nil. Errors from Kafka
// are handled (retried, reported, dead-lettered), not returned; Run
// returns an error only if the source fails.
func (f *Forwarder) Run(ctx context.Context) error {
	cl, err := kgo.NewClient(append(f.clientOpts(),
		kgo.ManualFlushing(),
		kgo.WithHooks(append([]kgo.Hook{hooks{f}}, f.cfg.Observers...)...), // the data path's connections show in Stats and the log
		kgo.RecordPartitioner(newPartitioner()),
		// The window bounds what is produced; the client's own bounds
		// only need to be above it.
		kgo.MaxBufferedRecords(f.cfg.MaxBufferedRecords+1),
		kgo.MaxBufferedBytes(f.cfg.MaxBufferedBytes+f.cfg.MaxBatchBytes),
	)...)
	if err != nil {
		return fmt.Errorf("forward: kafka client: %w", err)
	}
	// The helpers stop with ctx; the clients are closed before waiting for
	// them, which fails a status record a silent broker would hold forever.
	var helpers sync.WaitGroup
	helperCtx, stopHelpers := context.WithCancel(ctx)
	var statusCl *kgo.Client
	defer func() {
		stopHelpers()
		cl.Close()
		if statusCl != nil {
			statusCl.Close()
		}
		helpers.Wait()
	}()
	helpers.Go(func() { f.watch(helperCtx) })
	if f.cfg.StatusTopic != "" {
		statusCl, err = kgo.NewClient(append(f.clientOpts(), kgo.MaxBufferedRecords(4), kgo.WithHooks(statusHooks{f}))...)
		if err != nil {
			return fmt.Errorf("forward: kafka client for status records: %w", err)
		}
		helpers.Go(func() { f.reportStatus(helperCtx, statusCl) })
	}
	p := newPass(f, cl)
	return p.run(ctx)
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
		return d/2 + randN(d/2+1)
	}
}
