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
// gateway id: what the gateway holds and, above all, what it lost, so the
// data centre knows.
type Status struct {
	GatewayID string    `json:"gateway_id"`
	Time      time.Time `json:"time"`
	// Buffered is what waits in the buffer.
	BufferedRecords uint64 `json:"buffered_records"`
	BufferedBytes   uint64 `json:"buffered_bytes"`
	// Dropped counts records a configured limit removed, by reason
	// ("max_bytes", "max_age"), since the buffer file was created.
	Dropped map[string]uint64 `json:"dropped"`
	// Quarantined counts records set aside as undeliverable or
	// undecodable, since the buffer file was created.
	Quarantined uint64 `json:"quarantined"`
	// CorruptFiles is how many damaged buffer files ferry moved aside and
	// replaced with a new buffer (their records were not delivered).
	CorruptFiles int `json:"corrupt_files"`
	// Unrouted and Delivered count records since ferry started.
	Unrouted  uint64 `json:"unrouted"`
	Delivered uint64 `json:"delivered"`
	LastError string `json:"last_error,omitempty"`
}

// reportStatus sends a Status record every StatusInterval, and within
// seconds when the drop or quarantine counters change, until ctx is done.
// A failed send is logged (once per kind) and retried with the next one;
// it never holds up the data.
func (f *Forwarder) reportStatus(ctx context.Context, cl *kgo.Client) {
	check := time.NewTicker(min(f.cfg.StatusInterval, 5*time.Second))
	defer check.Stop()
	var sent Status
	var last time.Time
	for {
		bs := f.src.Stats()
		changed := !maps.Equal(bs.Dropped, sent.Dropped) || deadLettered(bs) != sent.Quarantined
		if last.IsZero() || changed || time.Since(last) >= f.cfg.StatusInterval {
			st := f.status(bs)
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
	return Status{
		GatewayID:       f.cfg.GatewayID,
		Time:            time.Now().UTC(),
		BufferedRecords: bs.Records,
		BufferedBytes:   bs.Bytes,
		Dropped:         bs.Dropped,
		Quarantined:     deadLettered(bs),
		CorruptFiles:    bs.CorruptFiles,
		Unrouted:        fs.Unrouted,
		Delivered:       fs.Delivered,
		LastError:       fs.LastError,
	}
}

// deadLettered is the buffer's dead-lettered records, all reasons.
func deadLettered(bs buffer.Stats) uint64 {
	var n uint64
	for _, c := range bs.DeadLettered {
		n += c
	}
	return n
}

func (f *Forwarder) sendStatus(ctx context.Context, cl *kgo.Client, st Status) error {
	v, err := json.Marshal(st)
	if err != nil {
		return err
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
