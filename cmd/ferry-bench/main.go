// Command ferry-bench measures ferry end to end as a user would: it runs
// the ferry binary as a child process between an MQTT broker (Mosquitto as
// a child process when installed, else the embedded mochi broker) and an
// in-process Kafka (kfake), all on 127.0.0.1; simulated devices publish
// numbered, timestamped messages at a target rate or flat out; a consumer
// reads the Kafka topic back. It reports what was sent, acknowledged,
// delivered, lost, duplicated and reordered, the throughput, the latency
// from send to read-back, and ferry's own CPU time, peak RSS and bytes
// written to storage (from /proc). With -baseline it first measures, in
// the same run, the ceilings ferry is compared with: the broker alone, a
// bridge that keeps nothing on disk, the disk alone and Kafka alone. With
// -idle it measures ferry with no messages instead.
//
//	go run ./cmd/ferry-bench -rate 1000 -devices 100 -payload 200 -duration 20s
//	go run ./cmd/ferry-bench -rate 0 -baseline
//	go run ./cmd/ferry-bench -rate 0 -backlog 1000000      # Kafka cut off until 1M messages wait
//	go run ./cmd/ferry-bench -idle 60s
//	go run ./cmd/ferry-bench -set buffer.sync=interval -json
//
// It links kfake and mochi; the ferry binary it measures does not. It is
// Linux only (it reads /proc).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// options are the benchmark's settings.
type options struct {
	FerryBin         string
	Devices          int
	Rate             float64
	QoS              int
	Payload          int
	Duration         time.Duration
	Messages         int64
	Tick             time.Duration
	Broker           string
	Config           ferryConfig
	Outage           time.Duration
	OutageAt         time.Duration
	Backlog          int64
	DrainTimeout     time.Duration
	Idle             time.Duration
	Settle           time.Duration
	Baseline         bool
	BaselineDuration time.Duration
	JSON             bool
	Quiet            bool
	Verbose          bool
	Keep             bool
	Dir              string
	CPUProfile       string
}

func main() {
	if isChild, code := childMain(); isChild {
		os.Exit(code)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	// A second signal ends the program at once; children die with it.
	context.AfterFunc(ctx, stop)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK       = 0
	exitFailure  = 1 // the benchmark could not run
	exitUsage    = 2
	exitNotClean = 3 // it ran, but something was lost, reordered or went wrong
)

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ", ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// parseFlags parses the command line into options.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("ferry-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: ferry-bench [flags]\n\n"+
			"Runs ferry between an MQTT broker and kfake with simulated devices and reports\n"+
			"delivery, throughput, latency, and ferry's CPU, memory and disk writes.\n\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.FerryBin, "ferry", "", "ferry binary to measure (default: go build ./cmd/ferry into the work directory)")
	fs.IntVar(&o.Devices, "devices", 100, "simulated devices, one MQTT connection each, one message in flight each")
	fs.Float64Var(&o.Rate, "rate", 1000, "messages per second over all devices; 0: flat out")
	fs.IntVar(&o.QoS, "qos", 1, "QoS of the publishes and of ferry's subscription (0, 1 or 2)")
	fs.IntVar(&o.Payload, "payload", 200, fmt.Sprintf("payload bytes (at least %d: device, seq and send time as JSON, padded)", minPayload))
	fs.DurationVar(&o.Duration, "duration", 20*time.Second, "how long the devices publish")
	fs.Int64Var(&o.Messages, "messages", 0, "stop after this many messages instead (0: -duration)")
	fs.DurationVar(&o.Tick, "tick", 2*time.Millisecond, "pacing interval with -rate: permits are handed out every tick")
	fs.StringVar(&o.Broker, "broker", "auto", "MQTT broker: auto (Mosquitto if installed, else mochi), mosquitto or mochi")
	fs.Var((*stringList)(&o.Config.Set), "set", "ferry config override key.path=value, value in YAML (repeatable), e.g. -set buffer.sync=interval")
	fs.Var((*stringList)(&o.Config.Extra), "config-extra", "YAML merged into ferry's config (repeatable); @FILE reads a file")
	fs.DurationVar(&o.Outage, "outage", 0, "cut Kafka off for this long (connections reset), starting -outage-at after the first publish")
	fs.DurationVar(&o.OutageAt, "outage-at", 5*time.Second, "when the -outage starts")
	fs.Int64Var(&o.Backlog, "backlog", 0, "cut Kafka off from the start, publish this many messages (instead of -duration), then restore Kafka and measure the drain")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", 2*time.Minute, "how long to wait, after publishing ends, for acknowledgements and for everything acknowledged to arrive")
	fs.DurationVar(&o.Idle, "idle", 0, "measure ferry idle (connected, no messages) for this long instead of under load")
	fs.DurationVar(&o.Settle, "settle", 3*time.Second, "with -idle: wait this long after ferry is ready before measuring")
	fs.BoolVar(&o.Baseline, "baseline", false, "also measure the ceilings: broker alone, a no-disk bridge, disk alone, Kafka alone")
	fs.DurationVar(&o.BaselineDuration, "baseline-duration", 10*time.Second, "how long each baseline runs")
	fs.BoolVar(&o.JSON, "json", false, "print the report as one JSON object")
	fs.BoolVar(&o.Quiet, "q", false, "no progress line")
	fs.BoolVar(&o.Verbose, "v", false, "copy ferry's log to stderr")
	fs.BoolVar(&o.Keep, "keep", false, "keep the work directory (config, logs, buffer)")
	fs.StringVar(&o.Dir, "dir", "", "where to create the work directory, on the file system to measure (default: $TMPDIR)")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write ferry-bench's own CPU profile (publishers, kfake, consumer) to this file")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for i, e := range o.Config.Extra {
		if path, ok := strings.CutPrefix(e, "@"); ok {
			b, err := os.ReadFile(path)
			if err != nil {
				return o, fmt.Errorf("-config-extra: %w", err)
			}
			o.Config.Extra[i] = string(b)
		}
	}
	return o, o.validate()
}

// validate checks the options; its errors name the flag and the limit.
func (o *options) validate() error {
	switch {
	case o.Devices < 1:
		return fmt.Errorf("-devices %d: must be at least 1", o.Devices)
	case o.Devices > 10000:
		return fmt.Errorf("-devices %d: at most 10000", o.Devices)
	case o.Rate < 0:
		return fmt.Errorf("-rate %g: must not be negative", o.Rate)
	case o.QoS < 0 || o.QoS > 2:
		return fmt.Errorf("-qos %d: must be 0, 1 or 2", o.QoS)
	case o.Payload < minPayload:
		return fmt.Errorf("-payload %d: must be at least %d bytes", o.Payload, minPayload)
	case o.Payload > 1<<20:
		return fmt.Errorf("-payload %d: at most 1 MiB", o.Payload)
	case o.Duration <= 0 && o.Messages <= 0 && o.Backlog <= 0 && o.Idle <= 0:
		return errors.New("-duration, -messages or -backlog must be above zero")
	case o.Tick < 100*time.Microsecond || o.Tick > time.Second:
		return fmt.Errorf("-tick %v: must be between 100µs and 1s", o.Tick)
	case o.Outage < 0 || o.OutageAt < 0:
		return errors.New("-outage and -outage-at must not be negative")
	case o.Outage > 0 && o.Backlog > 0:
		return errors.New("-outage and -backlog exclude each other")
	case o.DrainTimeout <= 0:
		return fmt.Errorf("-drain-timeout %v: must be above zero", o.DrainTimeout)
	case o.Idle > 0 && (o.Baseline || o.Outage > 0 || o.Backlog > 0):
		return errors.New("-idle measures ferry alone: not with -baseline, -outage or -backlog")
	case o.Baseline && o.BaselineDuration < 500*time.Millisecond:
		return fmt.Errorf("-baseline-duration %v: at least 500ms", o.BaselineDuration)
	}
	return nil
}

// run runs the benchmark and prints the report; it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "ferry-bench: %v\n", err)
		return exitUsage
	}
	if opts.CPUProfile != "" {
		stop, err := startCPUProfile(opts.CPUProfile)
		if err != nil {
			fmt.Fprintf(stderr, "ferry-bench: %v\n", err)
			return exitFailure
		}
		defer stop()
	}
	rep, err := measureAll(ctx, opts, stderr)
	if err != nil && ctx.Err() != nil {
		fmt.Fprintln(stderr, "ferry-bench: interrupted")
		return exitFailure
	}
	if err != nil {
		fmt.Fprintf(stderr, "ferry-bench: %v\n", err)
		return exitFailure
	}
	if opts.JSON {
		err = rep.writeJSON(stdout)
	} else {
		err = rep.writeText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "ferry-bench: write report: %v\n", err)
		return exitFailure
	}
	if !rep.OK {
		return exitNotClean
	}
	return exitOK
}

// measureAll sets up, runs the phases opts asks for and builds the report.
func measureAll(ctx context.Context, opts options, stderr io.Writer) (*Report, error) {
	b, err := newBench(ctx, opts, stderr)
	if err != nil {
		return nil, err
	}
	defer b.close()
	rep := &Report{Setup: b.setup()}
	if opts.Idle > 0 {
		r, err := b.runIdle(ctx)
		if err != nil {
			return nil, err
		}
		rep.Idle = idleReport(r)
		rep.OK = rep.ok()
		return rep, nil
	}
	var base *baselineResult
	if opts.Baseline {
		if base, err = b.runBaselines(ctx); err != nil {
			return nil, err
		}
	}
	fr, err := b.runFerry(ctx)
	if err != nil {
		return nil, err
	}
	rep.Ferry = phaseReport(fr, opts.Payload)
	if base != nil {
		rep.Baseline = baselineReport(base, rep.Ferry.MsgsPerSec, opts.Payload)
	}
	rep.OK = rep.ok()
	return rep, nil
}

// setup describes the run for the report.
func (b *bench) setup() Setup {
	o := b.opts
	s := Setup{
		Ferry: b.version, FerryBinary: b.ferryBin, FerrySource: b.source,
		Kafka:   fmt.Sprintf("kfake in process, %d partitions per topic", testenv.DefaultPartitions),
		Devices: o.Devices, QoS: o.QoS, PayloadBytes: o.Payload, TargetRate: o.Rate,
		Duration: o.Duration.Seconds(), Messages: o.Messages,
		ConfigExtra: o.Config.Extra, Set: o.Config.Set,
		WorkDir: b.dir, FileSystem: fsType(b.dir), CPUs: numCPU(),
	}
	switch b.broker.Kind {
	case testenv.KindMosquitto:
		s.Broker = "mosquitto (child process) at " + b.broker.Addr
	default:
		s.Broker = "mochi (embedded, in process) at " + b.broker.Addr
	}
	switch {
	case o.Backlog > 0:
		s.Messages, s.Duration = o.Backlog, 0
		s.Outage = fmt.Sprintf("Kafka cut off from the start until %d messages are acknowledged, then restored", o.Backlog)
	case o.Outage > 0:
		s.Outage = fmt.Sprintf("Kafka cut off %v after the first publish, for %v", o.OutageAt, o.Outage)
	}
	if o.Idle > 0 {
		s.Duration, s.TargetRate = 0, 0
	}
	return s
}

// startCPUProfile profiles this process into path until stop is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
