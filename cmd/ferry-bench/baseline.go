package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The ceilings -baseline measures in the same run, on the same machine,
// broker and Kafka, each flat out:
//
//   - broker alone: the devices publish to an in-process subscriber that
//     acknowledges at once; nothing else.
//   - bridge, no disk: a child process (this binary again) subscribes as
//     ferry does and hands each message to a franz-go producer, acking
//     before Kafka answers: the bridge that keeps nothing on disk.
//   - disk alone: the payloads appended to a file with fdatasync after
//     each batch, batches as large as the number of devices (each device
//     has one message in flight, so that is the most one commit can hold).
//   - Kafka alone: a franz-go producer (its defaults) writing the payloads
//     from memory to the kfake cluster.
type baselineResult struct {
	Broker *phaseResult
	Bridge *phaseResult
	Disk   diskResult
	Disk1  diskResult // one payload per fdatasync, for reference
	Kafka  kafkaResult
}

// runBaselines measures the ceilings.
func (b *bench) runBaselines(ctx context.Context) (*baselineResult, error) {
	var r baselineResult
	d := b.opts.BaselineDuration
	var err error
	b.progress.line(fmt.Sprintf("baseline: disk alone (%d payloads per fdatasync) ...", b.opts.Devices))
	if r.Disk, err = runDisk(ctx, b.dir, b.opts.Payload, b.opts.Devices, d/2); err != nil {
		return nil, err
	}
	b.progress.line("baseline: disk alone (1 payload per fdatasync) ...")
	if r.Disk1, err = runDisk(ctx, b.dir, b.opts.Payload, 1, d/2); err != nil {
		return nil, err
	}
	if b.ioProbe != nil {
		r.Disk.IO.Err, r.Disk1.IO.Err = b.ioProbe, b.ioProbe
	}
	b.progress.line("baseline: Kafka alone ...")
	if r.Kafka, err = runKafkaAlone(ctx, b.kafka.Brokers(), kafkaTopic, b.opts.Devices, b.opts.Payload, d); err != nil {
		return nil, err
	}
	if r.Broker, err = b.runBrokerAlone(ctx); err != nil {
		return nil, fmt.Errorf("baseline broker alone: %w", err)
	}
	if r.Bridge, err = b.runBridgeBaseline(ctx); err != nil {
		return nil, fmt.Errorf("baseline bridge: %w", err)
	}
	return &r, nil
}

// baselineLoad is the load of the broker and bridge baselines: the run's
// devices, QoS and payloads, flat out for -baseline-duration.
func (b *bench) baselineLoad(tag, topicFormat string) loadConfig {
	l := b.loadFor(tag, topicFormat)
	l.Rate, l.Duration, l.Messages = 0, b.opts.BaselineDuration, 0
	return l
}

// runBrokerAlone measures the broker with an in-process subscriber that
// acknowledges at once.
func (b *bench) runBrokerAlone(ctx context.Context) (*phaseResult, error) {
	t := newTracker(b.opts.Devices)
	s, err := startSubscriber(ctx, b.broker.Addr, fmt.Sprintf(subscriberTopicFormat, "+"), byte(b.opts.QoS), t)
	if err != nil {
		return nil, err
	}
	defer s.close()
	return b.measure(ctx, phase{name: "broker alone", load: b.baselineLoad("alone", subscriberTopicFormat), far: t})
}

// runBridgeBaseline measures the no-disk bridge child, read back from
// Kafka like ferry.
func (b *bench) runBridgeBaseline(ctx context.Context) (*phaseResult, error) {
	t := newTracker(b.opts.Devices)
	rb, err := startReadback(b.kafka.Brokers(), bridgeTopic, t)
	if err != nil {
		return nil, err
	}
	defer rb.close()
	b.progress.line("baseline: starting the bridge ...")
	c, err := startBridge(ctx, bridgeConfig{
		BrokerAddr: b.broker.Addr, Filter: fmt.Sprintf(bridgeTopicFormat, "+"), QoS: byte(b.opts.QoS),
		Kafka: b.kafka.Brokers(), Topic: bridgeTopic,
	}, filepath.Join(b.dir, "bridge.log"))
	if err != nil {
		return nil, err
	}
	defer c.stop(5 * time.Second)
	res, err := b.measure(ctx, phase{name: "bridge", load: b.baselineLoad("bridge", bridgeTopicFormat), proc: c, far: t})
	if err != nil {
		return nil, err
	}
	if err := c.stop(15 * time.Second); err != nil {
		res.problems = append(res.problems, fmt.Sprintf("bridge did not stop cleanly: %v", err))
	}
	return res, nil
}

// diskResult is what the disk-alone baseline measured.
type diskResult struct {
	Batch    int           // payloads per fdatasync
	Payloads int64         // appended and synced
	Syncs    int64         // fdatasync calls
	Elapsed  time.Duration //
	IO       ioCounters    // this process's, over the run (it writes nothing else to disk)
}

// perSecond returns payloads appended per second.
func (r diskResult) perSecond() float64 { return rate(r.Payloads, r.Elapsed) }

// runDisk appends payloads of size bytes to a new file in dir, batch at a
// time, each batch one write followed by fdatasync, for d.
func runDisk(ctx context.Context, dir string, size, batch int, d time.Duration) (diskResult, error) {
	r := diskResult{Batch: batch}
	path := filepath.Join(dir, "disk-baseline")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		return r, fmt.Errorf("disk baseline: %w", err)
	}
	defer os.Remove(path)
	defer f.Close()
	before := readIO(os.Getpid())
	buf := make([]byte, 0, batch*size)
	start := time.Now()
	var seq int64
	for time.Since(start) < d && ctx.Err() == nil {
		buf = buf[:0]
		now := time.Now().UnixNano()
		for i := range batch {
			buf = appendPayload(buf, stamp{device: i, seq: seq, sentAt: now}, size)
		}
		seq++
		if _, err := f.Write(buf); err != nil {
			return r, fmt.Errorf("disk baseline: write %s: %w", path, err)
		}
		if err := syncData(f); err != nil {
			return r, fmt.Errorf("disk baseline: fdatasync %s: %w", path, err)
		}
		r.Payloads += int64(batch)
		r.Syncs++
	}
	r.Elapsed = time.Since(start)
	r.IO = readIO(os.Getpid())
	if r.IO.Err == nil && before.Err == nil {
		r.IO.WriteBytes -= before.WriteBytes
		r.IO.CancelledBytes -= before.CancelledBytes
		r.IO.WChar -= before.WChar
	} else if r.IO.Err == nil {
		r.IO.Err = before.Err
	}
	return r, ctx.Err()
}

// kafkaResult is what the Kafka-alone baseline measured.
type kafkaResult struct {
	Acked, Failed int64
	Elapsed       time.Duration // first produce to the flush's end
}

// perSecond returns records acknowledged per second.
func (r kafkaResult) perSecond() float64 { return rate(r.Acked, r.Elapsed) }

// kafkaAloneMaxBytes bounds the payload bytes the Kafka baseline writes:
// kfake keeps everything in this process's memory.
const kafkaAloneMaxBytes = 256 << 20

// runKafkaAlone produces payloads from memory, keyed by device, to topic
// for d (or until kafkaAloneMaxBytes) and flushes: franz-go's defaults
// (acks=all, idempotent, 10 ms linger) with MaxBufferedRecords 10,000,
// like forward's plain-producer benchmark. Then it deletes the topic, so
// kfake frees the records.
func runKafkaAlone(ctx context.Context, brokers []string, topic string, devices, size int, d time.Duration) (kafkaResult, error) {
	var r kafkaResult
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.MaxBufferedRecords(10000))
	if err != nil {
		return r, fmt.Errorf("kafka baseline: client: %w", err)
	}
	defer cl.Close()
	const perDevice = 64
	keys := make([][]byte, devices)
	values := make([][]byte, devices*perDevice)
	now := time.Now().UnixNano()
	for i := range values {
		dev := i % devices
		keys[dev] = fmt.Appendf(nil, "dev-%02d", dev)
		values[i] = appendPayload(nil, stamp{device: dev, seq: int64(i / devices), sentAt: now}, size)
	}
	var acked, failed atomic.Int64
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			failed.Add(1)
		} else {
			acked.Add(1)
		}
	}
	limit := max(kafkaAloneMaxBytes/size, 1)
	start := time.Now()
	for i := 0; i < limit && time.Since(start) < d && ctx.Err() == nil; i++ {
		j := i % len(values)
		cl.Produce(ctx, &kgo.Record{Topic: topic, Key: keys[j%devices], Value: values[j]}, promise)
	}
	if err := cl.Flush(ctx); err != nil {
		return r, fmt.Errorf("kafka baseline: flush: %w", err)
	}
	r.Elapsed = time.Since(start)
	r.Acked, r.Failed = acked.Load(), failed.Load()
	if err := deleteTopic(ctx, cl, topic); err != nil {
		return r, fmt.Errorf("kafka baseline: %w", err)
	}
	return r, nil
}

// deleteTopic deletes topic.
func deleteTopic(ctx context.Context, cl *kgo.Client, topic string) error {
	req := kmsg.NewPtrDeleteTopicsRequest()
	t := kmsg.NewDeleteTopicsRequestTopic()
	t.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, t)
	req.TopicNames = []string{topic}
	req.TimeoutMillis = 10000
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("delete topic %s: %w", topic, err)
	}
	for _, t := range resp.Topics {
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			return fmt.Errorf("delete topic %s: %w", topic, err)
		}
	}
	return nil
}

// rate returns n per second over d.
func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}
