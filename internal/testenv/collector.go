package testenv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Received is one Kafka record the collector consumed.
type Received struct {
	Msg       Message // parsed payload
	Partition int32
	Offset    int64
	Key       []byte
	Headers   []kgo.RecordHeader
	Timestamp time.Time
}

// Report compares what the sensors got acknowledged with what reached Kafka.
type Report struct {
	Sent       int // messages acknowledged by the broker to the sensors
	Delivered  int // sensor records consumed from Kafka, duplicates included
	Unique     int // distinct (device, seq) pairs consumed
	Duplicates int // Delivered - Unique
	Lost       int // acknowledged messages never consumed
	// OutOfOrder counts, per device, first occurrences whose seq is lower
	// than a seq seen earlier, with records taken in partition offset
	// order. It is meaningful when each device maps to one partition.
	OutOfOrder int
	// Unacked counts distinct messages consumed that the sensors do not
	// report as acknowledged: a PUBACK lost on a dropped connection, or a
	// device unknown to the result. They are not an error.
	Unacked int
	// Unparsed counts records whose value is not a sensor message.
	Unparsed int
	// SplitDevices counts devices whose records arrived on more than one
	// partition; ferry keys records by device, so this should be zero.
	SplitDevices int
	// LostSample names up to 10 lost messages as "device#seq".
	LostSample []string
	// OutOfOrderSample names up to 10 messages counted in OutOfOrder as
	// "device#seq after #seq" (the highest seq before it) with the
	// partition and offset where it arrived.
	OutOfOrderSample []string
	// ResentDuplicates counts duplicates that carry the same identity
	// headers (ferry.buffer_id, ferry.seq) as the first copy: ferry sent
	// the same buffered record again (after a crash). The others (Duplicates
	// less these) are messages the MQTT broker delivered twice (a PUBACK
	// lost in a crash), stored twice by ferry.
	ResentDuplicates int
}

// String returns the report on one line.
func (r Report) String() string {
	s := fmt.Sprintf("sent=%d delivered=%d unique=%d lost=%d duplicates=%d out_of_order=%d",
		r.Sent, r.Delivered, r.Unique, r.Lost, r.Duplicates, r.OutOfOrder)
	if r.ResentDuplicates > 0 {
		s += fmt.Sprintf(" duplicates_same_identity=%d", r.ResentDuplicates)
	}
	if r.Unparsed > 0 {
		s += fmt.Sprintf(" unparsed=%d", r.Unparsed)
	}
	if r.SplitDevices > 0 {
		s += fmt.Sprintf(" split_devices=%d", r.SplitDevices)
	}
	if len(r.LostSample) > 0 {
		s += fmt.Sprintf(" lost_sample=%v", r.LostSample)
	}
	if len(r.OutOfOrderSample) > 0 {
		s += fmt.Sprintf(" out_of_order_sample=%v", r.OutOfOrderSample)
	}
	return s
}

// OK reports whether nothing was lost, reordered, unparsable or split.
// Duplicates are allowed.
func (r Report) OK() bool {
	return r.Lost == 0 && r.OutOfOrder == 0 && r.Unparsed == 0 && r.SplitDevices == 0
}

// Collector consumes one Kafka topic from the start, all partitions and
// without a consumer group, and keeps every sensor record it sees.
type Collector struct {
	cl     *kgo.Client
	cancel context.CancelFunc
	done   chan struct{}
	count  atomic.Int64
	closed sync.Once

	mu       sync.Mutex
	records  []Received
	unparsed int
	err      error // last fetch error, for diagnostics
}

// StartCollector starts consuming topic from its first offset. It stops when
// ctx is done or Close is called. opts add client options (security).
func StartCollector(ctx context.Context, brokers []string, topic string, opts ...kgo.Opt) (*Collector, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100 * time.Millisecond),
	}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("collector for %s: %w", topic, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	c := &Collector{cl: cl, cancel: cancel, done: make(chan struct{})}
	go c.run(ctx)
	return c, nil
}

func (c *Collector) run(ctx context.Context) {
	defer close(c.done)
	for ctx.Err() == nil {
		fs := c.cl.PollFetches(ctx)
		c.mu.Lock()
		fs.EachError(func(_ string, _ int32, err error) {
			if !errors.Is(err, context.Canceled) {
				c.err = err
			}
		})
		fs.EachRecord(func(r *kgo.Record) { c.addLocked(r) })
		c.mu.Unlock()
	}
}

func (c *Collector) addLocked(r *kgo.Record) {
	c.count.Add(1)
	m, err := DecodeMessage(r.Value)
	if err != nil {
		c.unparsed++
		return
	}
	c.records = append(c.records, Received{
		Msg:       m,
		Partition: r.Partition,
		Offset:    r.Offset,
		Key:       r.Key,
		Headers:   r.Headers,
		Timestamp: r.Timestamp,
	})
}

// Count returns how many records have been consumed, parsable or not.
func (c *Collector) Count() int64 { return c.count.Load() }

// Records returns a copy of the parsed records in consumption order.
func (c *Collector) Records() []Received {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.records)
}

// Close stops consuming and closes the Kafka client. It is safe to call
// more than once.
func (c *Collector) Close() {
	c.closed.Do(func() {
		c.cancel()
		<-c.done
		c.cl.Close()
	})
}

// WaitFor waits until every message acknowledged in res has been consumed,
// or ctx is done, and returns the report at that moment.
func (c *Collector) WaitFor(ctx context.Context, res *SensorsResult) Report {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		r := c.Report(res)
		if r.Lost == 0 {
			return r
		}
		select {
		case <-ctx.Done():
			return r
		case <-t.C:
		}
	}
}

// Report compares the records consumed so far with res.
func (c *Collector) Report(res *SensorsResult) Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	return buildReport(res, c.records, c.unparsed)
}

// LastError returns the last fetch error the consumer saw, if any. Fetch
// errors are retried; this is for diagnostics when WaitFor times out.
func (c *Collector) LastError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// buildReport computes a Report from the sensors' result and the consumed
// records.
func buildReport(res *SensorsResult, recs []Received, unparsed int) Report {
	rep := Report{Delivered: len(recs), Unparsed: unparsed}
	acked := map[string]int{}
	if res != nil {
		acked = res.Acked
	}
	for _, n := range acked {
		rep.Sent += n
	}

	byDevice := map[string][]Received{}
	for _, r := range recs {
		byDevice[r.Msg.Device] = append(byDevice[r.Msg.Device], r)
	}
	seen := map[string]map[int]bool{}
	for dev, rs := range byDevice {
		// Offset order within a partition is Kafka's order; the sort
		// is stable so consumption order breaks no ties that matter.
		sort.SliceStable(rs, func(i, j int) bool {
			if rs[i].Partition != rs[j].Partition {
				return rs[i].Partition < rs[j].Partition
			}
			return rs[i].Offset < rs[j].Offset
		})
		if rs[0].Partition != rs[len(rs)-1].Partition {
			rep.SplitDevices++
		}
		s := map[int]bool{}
		identity := map[int]string{}
		maxSeq := -1
		for _, r := range rs {
			id := header(r.Headers, "ferry.buffer_id") + "/" + header(r.Headers, "ferry.seq")
			if s[r.Msg.Seq] {
				if id != "/" && identity[r.Msg.Seq] == id {
					rep.ResentDuplicates++
				}
				continue
			}
			identity[r.Msg.Seq] = id
			s[r.Msg.Seq] = true
			if r.Msg.Seq < maxSeq {
				rep.OutOfOrder++
				if len(rep.OutOfOrderSample) < 10 {
					rep.OutOfOrderSample = append(rep.OutOfOrderSample,
						fmt.Sprintf("%s#%d after #%d (partition %d offset %d)", dev, r.Msg.Seq, maxSeq, r.Partition, r.Offset))
				}
			}
			maxSeq = max(maxSeq, r.Msg.Seq)
			if r.Msg.Seq >= acked[dev] {
				rep.Unacked++
			}
		}
		seen[dev] = s
		rep.Unique += len(s)
	}
	rep.Duplicates = rep.Delivered - rep.Unique

	devs := make([]string, 0, len(acked))
	for dev := range acked {
		devs = append(devs, dev)
	}
	sort.Strings(devs)
	for _, dev := range devs {
		for seq := range acked[dev] {
			if seen[dev][seq] {
				continue
			}
			rep.Lost++
			if len(rep.LostSample) < 10 {
				rep.LostSample = append(rep.LostSample, fmt.Sprintf("%s#%d", dev, seq))
			}
		}
	}
	return rep
}

// header returns the value of the first header named key, or "".
func header(hs []kgo.RecordHeader, key string) string {
	for _, h := range hs {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
