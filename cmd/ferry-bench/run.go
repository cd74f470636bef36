package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// Kafka topics of the phases, created with testenv.DefaultPartitions each,
// and ferry's status topic (its default; ferry does not create topics).
const (
	ferryTopic  = "telemetry"
	statusTopic = "ferry.status"
	bridgeTopic = "bench.bridge"
	kafkaTopic  = "bench.kafka"
)

// MQTT topics the devices publish to, per phase: only ferry's match its
// subscription, so nothing of a baseline reaches ferry's session.
const (
	ferryTopicFormat      = "sensors/%s/telemetry"
	bridgeTopicFormat     = "bridge/%s/telemetry"
	subscriberTopicFormat = "alone/%s/telemetry"
)

// bench is one benchmark run: a work directory, the broker, Kafka and the
// ferry binary, shared by its phases.
type bench struct {
	opts     options
	dir      string
	broker   *testenv.Broker
	kafka    *testenv.Kafka
	ferryBin string
	source   string // where ferryBin came from
	version  string
	// ioProbe says why write_bytes cannot be trusted in the work
	// directory; nil when a probe write was counted.
	ioProbe error
	// brokerPID is Mosquitto's process, 0 for mochi (which runs in this
	// process).
	brokerPID int
	progress  *progress
	echo      io.Writer // ferry's log with -v, else nil
}

// newBench creates the work directory, starts the broker and Kafka and
// builds ferry (unless opts.FerryBin names one). close undoes it all.
func newBench(ctx context.Context, opts options, stderr io.Writer) (_ *bench, err error) {
	b := &bench{opts: opts, progress: newProgress(stderr, opts.Quiet)}
	if opts.Verbose {
		b.echo = stderr
	}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	if b.dir, err = os.MkdirTemp(opts.Dir, "ferry-bench-"); err != nil {
		return nil, fmt.Errorf("work directory: %w", err)
	}
	b.ioProbe = probeIOAccounting(b.dir)
	switch opts.Broker {
	case "auto":
		b.broker, err = testenv.StartBroker(b.dir, nil)
	case testenv.KindMosquitto:
		b.broker, err = testenv.StartMosquitto(b.dir, nil)
	case testenv.KindMochi:
		b.broker, err = testenv.StartMochi()
	default:
		err = fmt.Errorf("-broker %q: want auto, mosquitto or mochi", opts.Broker)
	}
	if err != nil {
		return nil, fmt.Errorf("start MQTT broker: %w", err)
	}
	if b.broker.Kind == testenv.KindMosquitto {
		b.brokerPID = childPID("mosquitto")
	}
	if b.kafka, err = testenv.StartKafka(ferryTopic, statusTopic, bridgeTopic, kafkaTopic); err != nil {
		return nil, fmt.Errorf("start Kafka: %w", err)
	}
	b.ferryBin, b.source = opts.FerryBin, "given with -ferry"
	if b.ferryBin == "" {
		b.progress.line("building ferry ...")
		if b.ferryBin, b.source, err = buildFerry(ctx, b.dir); err != nil {
			return nil, err
		}
		b.progress.line("built ferry from " + b.source)
	}
	b.version = ferryVersion(b.ferryBin)
	return b, nil
}

// close stops the broker and Kafka and removes the work directory (unless
// -keep).
func (b *bench) close() {
	b.progress.clear()
	if b.broker != nil {
		_ = b.broker.Close()
	}
	if b.kafka != nil {
		b.kafka.Close()
	}
	if b.dir != "" && !b.opts.Keep {
		_ = os.RemoveAll(b.dir)
	}
}

// loadFor returns the load settings of a phase publishing to topicFormat.
// -messages replaces -duration.
func (b *bench) loadFor(tag, topicFormat string) loadConfig {
	l := loadConfig{
		BrokerAddr: b.broker.Addr, Devices: b.opts.Devices, QoS: byte(b.opts.QoS), Payload: b.opts.Payload,
		Rate: b.opts.Rate, Duration: b.opts.Duration, Messages: b.opts.Messages, Tick: b.opts.Tick,
		TopicFormat: topicFormat, ClientTag: tag,
	}
	if l.Messages > 0 {
		l.Duration = 0
	}
	return l
}

// ferryStopTimeout bounds ferry's clean stop before it is killed.
const ferryStopTimeout = 30 * time.Second

// startConfiguredFerry writes ferry's configuration, checks it and starts
// ferry. It returns ferry and its metrics address.
func (b *bench) startConfiguredFerry(ctx context.Context) (*child, string, error) {
	cfgPath := filepath.Join(b.dir, "ferry.yaml")
	admin, err := b.opts.Config.write(cfgPath, b.broker, b.kafka, ferryTopic, b.bufferPath())
	if err != nil {
		return nil, "", err
	}
	if err := checkFerryConfig(b.ferryBin, cfgPath); err != nil {
		return nil, "", err
	}
	b.progress.line("starting ferry ...")
	f, err := startFerry(ctx, b.ferryBin, cfgPath, admin, filepath.Join(b.dir, "ferry.log"), b.echo)
	if err != nil {
		return nil, "", err
	}
	return f, admin, nil
}

func (b *bench) bufferPath() string { return filepath.Join(b.dir, "buffer.db") }

// runFerry measures ferry under the configured load.
func (b *bench) runFerry(ctx context.Context) (*phaseResult, error) {
	t := newTracker(b.opts.Devices)
	rb, err := startReadback(b.kafka.Brokers(), ferryTopic, t)
	if err != nil {
		return nil, err
	}
	defer rb.close()
	f, admin, err := b.startConfiguredFerry(ctx)
	if err != nil {
		return nil, err
	}
	defer f.stop(5 * time.Second) // on an early return
	ld := b.loadFor("ferry", ferryTopicFormat)
	if b.opts.Backlog > 0 {
		ld.Messages, ld.Duration = b.opts.Backlog, 0
	}
	res, err := b.measure(ctx, phase{name: "ferry", load: ld, proc: f, far: t, admin: admin, outage: true, file: b.bufferPath()})
	if err != nil && b.opts.Keep {
		err = fmt.Errorf("%w (ferry's log: %s)", err, f.logPath)
	}
	if err != nil {
		return nil, err
	}
	if err := f.stop(ferryStopTimeout); err != nil {
		res.problems = append(res.problems, fmt.Sprintf("ferry did not stop cleanly: %v", err))
	}
	if err := rb.err(); err != nil && !res.complete() {
		res.problems = append(res.problems, fmt.Sprintf("last Kafka fetch error: %v", err))
	}
	return res, nil
}

// phase is one measured run of a load through one system.
type phase struct {
	name   string
	load   loadConfig
	proc   *child   // the process measured; nil for an in-process far end
	far    *tracker // what arrives at the far end
	admin  string   // ferry's metrics endpoint, if any
	outage bool     // apply -outage and -backlog
	file   string   // a file whose growth is the disk figure's fallback
}

// phaseResult is what a phase measured.
type phaseResult struct {
	name        string
	pid         int // of the process measured; 0 for none
	load        loadConfig
	counts      loadCounts
	del         delivery
	start       time.Time     // first publish
	loadTime    time.Duration // first publish to the last device stopping
	win         *window       // nil without a process
	metrics     map[string]float64
	fileGrowth  int64 // -1 if unknown
	peakAnon    int64 // highest RssAnon sampled (every 100 ms)
	peakBacklog int64
	outage      *outageResult
	problems    []string
}

// complete reports whether every acknowledged message arrived.
func (r *phaseResult) complete() bool { return r.del.Lost == 0 }

// outageResult describes a Kafka outage during a phase.
type outageResult struct {
	At, Length   time.Duration // from the first publish; how long Kafka was cut off
	BacklogAtEnd int64         // acknowledged, not yet in Kafka, when it came back
	// FirstArrival is the time from its end to the first arrival after
	// it (0: none); Drain until everything acknowledged before its end
	// was in Kafka (0: not drained), and Drained how many messages
	// arrived meanwhile (new ones included).
	FirstArrival time.Duration
	Drain        time.Duration
	Drained      int64

	restoredAt       time.Time
	ackedAtRestore   []int64
	arrivedAtRestore int64
}

// measure runs ph's load and waits until every acknowledged message has
// arrived at the far end (or -drain-timeout passes), sampling ph.proc at
// the first publish and at the last arrival. It prints a progress line
// every second.
func (b *bench) measure(ctx context.Context, ph phase) (*phaseResult, error) {
	b.progress.line(fmt.Sprintf("%s: connecting %d devices ...", ph.name, ph.load.Devices))
	l, err := newLoad(ctx, ph.load)
	if err != nil {
		return nil, err
	}
	defer l.abandon() // returns at once once they are done
	res := &phaseResult{name: ph.name, load: ph.load, fileGrowth: -1}
	pid := 0
	var procExited <-chan struct{}
	if ph.proc != nil {
		pid, procExited = ph.proc.pid(), ph.proc.exited
	}
	res.pid = pid
	var m0 map[string]float64
	if ph.admin != "" {
		m0, _ = scrapeMetrics(ph.admin)
	}
	var fileStart int64 = -1
	if ph.file != "" {
		if st, err := os.Stat(ph.file); err == nil {
			fileStart = st.Size()
		}
	}
	w, err := beginWindow(pid, b.brokerPID)
	if err != nil {
		return nil, err
	}

	// The Kafka outage, if any: cut at cutAt, restored at restoreAt
	// (-outage) or once the publishers are done (-backlog).
	var cutAt, restoreAt time.Duration = -1, -1
	if ph.outage && b.opts.Backlog > 0 {
		cutAt = 0
	} else if ph.outage && b.opts.Outage > 0 {
		cutAt, restoreAt = b.opts.OutageAt, b.opts.OutageAt+b.opts.Outage
	}
	kafkaDown := false
	defer func() {
		if kafkaDown {
			b.kafka.SetReachable(true)
		}
	}()

	if cutAt == 0 {
		b.kafka.SetReachable(false)
		kafkaDown = true
		res.outage = &outageResult{}
	}
	l.run()
	res.start = l.start
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var (
		haltedAt, doneAt time.Time
		lastPrint        = l.start
		lastDelivered    int64
		lastCPU          time.Duration
		abandoned        bool
	)
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-procExited:
			return nil, fmt.Errorf("%s exited during the run: %v; last output:\n%s", ph.name, ph.proc.waitErr, ph.proc.lastLines())
		case <-tick.C:
		}
		now := time.Now()
		since := now.Sub(l.start)
		if pid > 0 {
			if _, _, anon, err := readMemory(pid); err == nil {
				res.peakAnon = max(res.peakAnon, anon)
			}
		}
		c := l.counts()
		delivered := ph.far.uniqueCount()
		res.peakBacklog = max(res.peakBacklog, c.Acked-delivered)
		if haltedAt.IsZero() && isClosed(l.stop) {
			haltedAt = now
		}
		if doneAt.IsZero() && isClosed(l.done) {
			doneAt = now
		}

		switch {
		case cutAt >= 0 && !kafkaDown && res.outage == nil && since >= cutAt:
			b.kafka.SetReachable(false)
			kafkaDown = true
			res.outage = &outageResult{At: since}
		case kafkaDown && ((restoreAt >= 0 && since >= restoreAt) || (restoreAt < 0 && !doneAt.IsZero())):
			b.kafka.SetReachable(true)
			kafkaDown = false
			o := res.outage
			o.Length = since - o.At
			o.BacklogAtEnd = c.Acked - delivered
			o.restoredAt, o.ackedAtRestore, o.arrivedAtRestore = now, l.acked(), delivered
			ph.far.watch(now)
		case res.outage != nil && !kafkaDown && res.outage.Drain == 0 && ph.far.caughtUp(res.outage.ackedAtRestore):
			res.outage.Drain = now.Sub(res.outage.restoredAt)
			res.outage.Drained = delivered - res.outage.arrivedAtRestore
		}

		if now.Sub(lastPrint) >= time.Second {
			cpu := ""
			if pid > 0 {
				if s, err := sampleProc(pid); err == nil {
					cpu = fmt.Sprintf("  cpu %3.0f%%  rss %4.0f MB", 100*(s.CPU-lastCPU).Seconds()/now.Sub(lastPrint).Seconds(), mb(s.RSS))
					if lastCPU == 0 {
						cpu = fmt.Sprintf("  rss %4.0f MB", mb(s.RSS))
					}
					lastCPU = s.CPU
				}
			}
			state := ""
			if kafkaDown {
				state = "  KAFKA DOWN"
			} else if !doneAt.IsZero() {
				state = "  draining"
			}
			b.progress.line(fmt.Sprintf("%s %5.0fs  sent %9d  acked %9d  arrived %9d  backlog %8d  %7.0f msg/s%s%s",
				ph.name, since.Seconds(), c.Sent, c.Acked, delivered, c.Acked-delivered,
				float64(delivered-lastDelivered)/now.Sub(lastPrint).Seconds(), cpu, state))
			lastPrint, lastDelivered = now, delivered
		}

		if doneAt.IsZero() {
			// Publishers wait for their acknowledgements after the
			// halt; give up on them after the drain timeout.
			if !haltedAt.IsZero() && !abandoned && now.Sub(haltedAt) > b.opts.DrainTimeout {
				abandoned = true
				go l.abandon()
				res.problems = append(res.problems, fmt.Sprintf("publishers still waited for acknowledgements %v after the load ended; abandoned them", b.opts.DrainTimeout))
			}
			continue
		}
		if kafkaDown {
			continue
		}
		if ph.far.caughtUp(l.acked()) {
			break
		}
		from := doneAt
		if res.outage != nil && res.outage.restoredAt.After(from) {
			from = res.outage.restoredAt
		}
		if now.Sub(from) > b.opts.DrainTimeout {
			res.problems = append(res.problems, fmt.Sprintf("not every acknowledged message arrived within -drain-timeout %v", b.opts.DrainTimeout))
			break
		}
	}
	if err := w.end(pid); err != nil {
		return nil, err
	}
	if b.ioProbe != nil && w.IO.Err == nil {
		w.IO.Err = b.ioProbe
	}
	if pid > 0 {
		res.win = w
	} else {
		// The machine's figures are still worth having.
		res.win = &window{Elapsed: w.Elapsed, HostBusy: w.HostBusy, SelfCPU: w.SelfCPU, BrokerCPU: w.BrokerCPU}
	}
	if m0 != nil {
		if m1, err := scrapeMetrics(ph.admin); err == nil {
			res.metrics = map[string]float64{}
			for k, v := range m1 {
				res.metrics[k] = v - m0[k]
			}
		}
	}
	if fileStart >= 0 {
		if st, err := os.Stat(ph.file); err == nil {
			res.fileGrowth = st.Size() - fileStart
		}
	}
	res.counts = l.counts()
	res.loadTime = l.elapsed()
	res.del = ph.far.summary(l.acked())
	if o := res.outage; o != nil && !o.restoredAt.IsZero() {
		if o.Drain == 0 && ph.far.caughtUp(o.ackedAtRestore) {
			// Drained between the last tick and now: the last
			// arrival is the closest bound.
			o.Drain = res.del.LastAt.Sub(o.restoredAt)
			o.Drained = res.del.Unique - o.arrivedAtRestore
		}
		if first := ph.far.firstArrival(); !first.IsZero() {
			o.FirstArrival = first.Sub(o.restoredAt)
		}
	}
	if cutAt > 0 && res.outage == nil {
		res.problems = append(res.problems, fmt.Sprintf("no outage: the run was over %v after the first publish, before -outage-at %v", time.Since(l.start).Round(100*time.Millisecond), cutAt))
	}
	b.progress.clear()
	return res, nil
}

// isClosed reports whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

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

// mb converts bytes to MB (10^6).
func mb(n int64) float64 { return float64(n) / 1e6 }

// numCPU is the number of CPUs this process may use.
func numCPU() int { return runtime.NumCPU() }
