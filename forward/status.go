package forward

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/buffer"
)

// Status is the record the forwarder sends to Config.StatusTopic, keyed by
// gateway id: what the gateway holds and, above all, what it lost or set
// aside, so the data centre knows.
type Status struct {
	GatewayID string    `json:"gateway_id"`
	Time      time.Time `json:"time"`
	// Buffered is what waits in the buffer.
	BufferedRecords uint64 `json:"buffered_records"`
	BufferedBytes   uint64 `json:"buffered_bytes"`
	// Dropped counts records a configured limit removed, by reason
	// ("max_bytes", "max_age", "purged", "dead_letter_limit",
	// "dead_letter_purged"), since the buffer file was created.
	Dropped map[string]uint64 `json:"dropped"`
	// DeadLettered counts records set aside as undeliverable, by reason
	// (see the Reason constants; "undecodable" for damaged records), since
	// the buffer file was created. DeadLetterRecords and DeadLetterBytes
	// are what the dead-letter bucket holds now.
	DeadLettered      map[buffer.Reason]uint64 `json:"dead_lettered"`
	DeadLetterRecords uint64                   `json:"dead_letter_records"`
	DeadLetterBytes   uint64                   `json:"dead_letter_bytes"`
	// CorruptFiles is how many damaged buffer files ferry moved aside and
	// replaced with a new buffer (their records were not delivered).
	CorruptFiles int `json:"corrupt_files"`
	// DiskFull is true while the buffer's commits fail for want of space;
	// CommitError says why commits fail, while they do.
	DiskFull    bool   `json:"disk_full"`
	CommitError string `json:"commit_error,omitempty"`
	// BufferID names the buffer's log, as in the records' ferry.buffer_id
	// header.
	BufferID string `json:"buffer_id"`
	// Unrouted and Delivered count records since ferry started.
	Unrouted  uint64 `json:"unrouted"`
	Delivered uint64 `json:"delivered"`
	LastError string `json:"last_error,omitempty"`
	// MQTTSessionsLost counts, since ferry started, the connections on
	// which the MQTT broker no longer had ferry's session: what it had
	// queued for ferry was lost there.
	MQTTSessionsLost uint64 `json:"mqtt_sessions_lost"`
	// RateLimited is true while the byte-rate cap, MaxBytesPerSecond
	// (omitted when there is none), is what holds records back.
	RateLimited       bool `json:"rate_limited"`
	MaxBytesPerSecond int  `json:"max_bytes_per_second,omitempty"`
}

// IngestStatus is what the status record tells of the MQTT side, since
// ferry started: messages acknowledged and dropped, by reason (they join
// Status.Dropped), and sessions the broker lost.
type IngestStatus struct {
	Dropped      map[string]uint64
	SessionsLost uint64
}

// reportStatus sends a Status record every StatusInterval, and within
// seconds when the drop or dead-letter counters change, until ctx is done.
// A failed send is logged (once per kind) and retried with the next one;
// it never holds up the data: cl is a client of its own.
func (f *Forwarder) reportStatus(ctx context.Context, cl *kgo.Client) {
	check := time.NewTicker(min(f.cfg.StatusInterval, 5*time.Second))
	defer check.Stop()
	var sent Status
	var last time.Time
	for {
		st := f.status(f.src.Stats())
		changed := !maps.Equal(st.Dropped, sent.Dropped) || !maps.Equal(st.DeadLettered, sent.DeadLettered) || st.DiskFull != sent.DiskFull ||
			st.MQTTSessionsLost != sent.MQTTSessionsLost
		if last.IsZero() || changed || time.Since(last) >= f.cfg.StatusInterval {
			if err := f.sendStatus(ctx, cl, st); err != nil {
				if ctx.Err() != nil {
					return
				}
				if key := errKey(err); f.statusErr.Swap(key) != key {
					f.log.Warn("cannot send the status record; will retry", "topic", f.cfg.StatusTopic, "err", err)
				}
			} else {
				f.statusErr.Store("")
				sent, last = st, time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-check.C:
		}
	}
}

func (f *Forwarder) status(bs buffer.Stats) Status {
	fs := f.Stats()
	var in IngestStatus
	if f.cfg.Ingest != nil {
		in = f.cfg.Ingest()
	}
	dropped := bs.Dropped
	if len(in.Dropped) > 0 {
		dropped = maps.Clone(bs.Dropped)
		if dropped == nil {
			dropped = map[string]uint64{}
		}
		maps.Copy(dropped, in.Dropped)
	}
	return Status{
		GatewayID:         f.cfg.GatewayID,
		Time:              time.Now().UTC(),
		BufferedRecords:   bs.Records,
		BufferedBytes:     bs.Bytes,
		Dropped:           dropped,
		DeadLettered:      bs.DeadLettered,
		DeadLetterRecords: bs.DeadLetterRecords,
		DeadLetterBytes:   bs.DeadLetterBytes,
		CorruptFiles:      bs.CorruptFiles,
		DiskFull:          bs.DiskFull,
		CommitError:       bs.CommitError,
		BufferID:          bs.ID,
		Unrouted:          fs.Unrouted,
		Delivered:         fs.Delivered,
		LastError:         fs.LastError,
		MQTTSessionsLost:  in.SessionsLost,
		RateLimited:       fs.RateLimited,
		MaxBytesPerSecond: f.cfg.MaxBytesPerSecond,
	}
}

func (f *Forwarder) sendStatus(ctx context.Context, cl *kgo.Client, st Status) error {
	v, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode status: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r := &kgo.Record{
		Topic: f.cfg.StatusTopic, Key: []byte(f.cfg.GatewayID), Value: v, Timestamp: st.Time,
		Headers: []kgo.RecordHeader{{Key: HeaderGateway, Value: []byte(f.cfg.GatewayID)}},
	}
	if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		return fmt.Errorf("produce status to %q: %w", f.cfg.StatusTopic, err)
	}
	return nil
}
