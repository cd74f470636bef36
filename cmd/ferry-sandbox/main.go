// Command ferry-sandbox shows ferry at work on one machine, with nothing to
// install: it starts an embedded MQTT broker (mochi-mqtt), an in-process
// Kafka (kfake) and simulated sensors on loopback, runs ferry between them,
// cuts Kafka off for a few seconds to show the buffer filling and draining,
// and ends with a verification line. It exits non-zero if anything the
// broker acknowledged was lost or reordered.
//
//	go run ./cmd/ferry-sandbox
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ferry-edge/ferry/config"
	"github.com/ferry-edge/ferry/internal/agent"
	"github.com/ferry-edge/ferry/internal/testenv"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-sandbox:", err)
		os.Exit(1)
	}
}

func run() error {
	devices := flag.Int("devices", 20, "simulated sensors")
	messages := flag.Int("messages", 600, "messages per sensor")
	interval := flag.Duration("interval", 10*time.Millisecond, "pause between two messages of one sensor (the embedded mochi-mqtt broker stalls when this is below about 2ms)")
	outage := flag.Duration("outage", 5*time.Second, "how long Kafka is cut off once a third of the messages are sent (0: never)")
	verbose := flag.Bool("v", false, "show ferry's log")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "ferry-sandbox-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	broker, err := testenv.StartMochi()
	if err != nil {
		return fmt.Errorf("start MQTT broker: %w", err)
	}
	defer broker.Close()
	const topic = "telemetry"
	kafka, err := testenv.StartKafka(topic, "ferry.status")
	if err != nil {
		return fmt.Errorf("start Kafka: %w", err)
	}
	defer kafka.Close()

	configPath := filepath.Join(dir, "ferry.yaml")
	if err := os.WriteFile(configPath, []byte(testenv.FerryConfig(broker, kafka, topic, filepath.Join(dir, "buffer.db"))), 0o600); err != nil {
		return err
	}
	cfg, err := config.Load(configPath)
	if err != nil {
		return err
	}
	logw := io.Discard
	if *verbose {
		logw = os.Stderr
	}
	a, err := agent.New(cfg, slog.New(slog.NewTextHandler(logw, nil)), agent.Options{})
	if err != nil {
		return err
	}

	fmt.Printf("MQTT broker  mochi-mqtt (embedded) at %s\n", broker.URL())
	fmt.Printf("Kafka        kfake (in process) at %v, topic %q\n", kafka.Brokers(), topic)
	fmt.Printf("ferry        buffer %s, config %s\n", cfg.Buffer.Path, configPath)
	fmt.Printf("sensors      %d devices x %d QoS 1 messages on sensors/<device>/telemetry\n\n", *devices, *messages)

	agentCtx, stopAgent := context.WithCancel(context.Background())
	defer stopAgent()
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(agentCtx) }()
	for !a.Stats().MQTT.Subscribed {
		select {
		case err := <-agentDone:
			return fmt.Errorf("ferry stopped: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}

	collector, err := testenv.StartCollector(ctx, kafka.Brokers(), topic)
	if err != nil {
		return err
	}
	defer collector.Close()
	sensors := testenv.StartSensors(ctx, testenv.SensorsConfig{
		BrokerURL: broker.URL(), Devices: *devices, PerDevice: *messages, Interval: *interval, QoS: 1,
	})

	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var restore <-chan time.Time
	outageShown, cut := *outage <= 0, false
	var prevSent, prevDelivered int64
	kafkaState := "up"
	total := int64(*devices * *messages)
	fmt.Printf("%5s  %8s %8s  %9s  %9s %8s  %s\n", "time", "sent", "msg/s", "buffered", "in kafka", "msg/s", "kafka")
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-agentDone:
			return fmt.Errorf("ferry stopped: %w", err)
		case <-restore:
			kafka.SetReachable(true)
			kafkaState = "up"
			outageShown = true
			fmt.Println("-- Kafka reachable again: ferry drains the backlog in order --")
		case <-tick.C:
			st := a.Stats()
			sent, delivered := sensors.Sent(), collector.Count()
			fmt.Printf("%4.0fs  %8d %8d  %9d  %9d %8d  %s\n", time.Since(start).Seconds(),
				sent, sent-prevSent, st.Buffer.Records, delivered, delivered-prevDelivered, kafkaState)
			prevSent, prevDelivered = sent, delivered
			done = sent >= total && delivered >= total && outageShown
			if !outageShown && !cut && sent >= total/3 {
				cut = true
				kafka.SetReachable(false)
				kafkaState = "DOWN"
				fmt.Printf("-- Kafka cut off for %v: ferry keeps acknowledging sensors, the buffer grows --\n", *outage)
				restore = time.After(*outage)
			}
		case <-sensors.Done():
			if sent := sensors.Sent(); sent < total {
				_, err := sensors.Wait()
				return fmt.Errorf("sensors stopped early: %w", err)
			}
		}
	}

	res, err := sensors.Wait()
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rep := collector.WaitFor(wctx, res)
	stopAgent()
	if err := <-agentDone; err != nil {
		return fmt.Errorf("ferry: %w", err)
	}
	fs := a.Stats().Forward
	fmt.Printf("\nverification: sent=%d delivered=%d lost=%d duplicates=%d out_of_order=%d (ferry delivered %d, unrouted %d)\n",
		rep.Sent, rep.Delivered, rep.Lost, rep.Duplicates, rep.OutOfOrder, fs.Delivered, fs.Unrouted)
	if !rep.OK() {
		return fmt.Errorf("verification failed: %s", rep)
	}
	fmt.Println("OK: every message the broker acknowledged reached Kafka, in order per device")
	return nil
}
