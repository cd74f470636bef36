package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/twmb/franz-go/pkg/kgo"
)

// envBridge names the environment variable that makes the ferry-bench
// binary run as the bridge baseline instead of the benchmark; its value is
// the bridgeConfig as JSON.
const envBridge = "FERRY_BENCH_BRIDGE"

// bridgeReady is the line the bridge prints once it is subscribed.
const bridgeReady = "bridge: subscribed"

// bridgeConfig configures the bridge child.
type bridgeConfig struct {
	BrokerAddr string   `json:"broker_addr"`
	Filter     string   `json:"filter"` // e.g. bridge/+/telemetry; the device is the second level
	QoS        byte     `json:"qos"`
	Kafka      []string `json:"kafka"`
	Topic      string   `json:"topic"`
}

// childMain runs the bridge and returns true with its exit code when the
// environment asks for it; otherwise it returns false. main and TestMain
// call it first.
func childMain() (bool, int) {
	raw := os.Getenv(envBridge)
	if raw == "" {
		return false, 0
	}
	var cfg bridgeConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "bridge: %s: %v\n", envBridge, err)
		return true, 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := runBridge(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "bridge: %v\n", err)
		return true, 1
	}
	return true, 0
}

// runBridge is the baseline "bridge that keeps nothing on disk": one MQTT
// v5 subscription (clean session, Receive Maximum 1000 like ferry's) whose
// messages are handed to a franz-go producer (acks=all, idempotent, its
// defaults) keyed by device, and acknowledged to the broker as soon as the
// producer has taken them, before Kafka answers and with no disk at all.
// The producer's bound (MaxBufferedRecords, 10,000) is the only
// backpressure. It runs until ctx is done, then flushes for up to 10 s.
func runBridge(ctx context.Context, cfg bridgeConfig) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Kafka...), kgo.MaxBufferedRecords(10000))
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	var failed atomic.Int64
	var lastErr atomic.Pointer[error]
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			failed.Add(1)
			lastErr.Store(&err)
		}
	}

	conn, err := dialTCP(ctx, cfg.BrokerAddr)
	if err != nil {
		return err
	}
	lost := make(chan struct{}, 1)
	onLost := func() {
		select {
		case lost <- struct{}{}:
		default:
		}
	}
	const id = "ferry-bench-bridge"
	c := paho.NewClient(paho.ClientConfig{
		Conn:     conn,
		ClientID: id,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			p := pr.Packet
			key := p.Topic
			if parts := strings.SplitN(p.Topic, "/", 3); len(parts) == 3 {
				key = parts[1]
			}
			// Produce blocks while the producer's buffer is full:
			// that holds back this handler and so the acks.
			cl.Produce(ctx, &kgo.Record{Topic: cfg.Topic, Key: []byte(key), Value: p.Payload}, promise)
			return true, nil
		}},
		OnClientError:      func(error) { onLost() },
		OnServerDisconnect: func(*paho.Disconnect) { onLost() },
	})
	recvMax := uint16(1000)
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30,
		Properties: &paho.ConnectProperties{ReceiveMaximum: &recvMax}}); err != nil {
		conn.Close()
		return fmt.Errorf("connect to %s: %w", cfg.BrokerAddr, err)
	}
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: cfg.Filter, QoS: cfg.QoS}}}); err != nil {
		_ = c.Disconnect(&paho.Disconnect{})
		return fmt.Errorf("subscribe %s: %w", cfg.Filter, err)
	}
	fmt.Println(bridgeReady)

	select {
	case <-ctx.Done():
	case <-lost:
		return fmt.Errorf("lost the connection to the broker")
	}
	_ = c.Disconnect(&paho.Disconnect{})
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.Flush(fctx); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d records failed, the last: %v", n, *lastErr.Load())
	}
	return nil
}

// startBridge runs this program again as the bridge child (see childMain).
func startBridge(ctx context.Context, cfg bridgeConfig, logPath string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("bridge: find own executable: %w", err)
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("bridge: %w", err)
	}
	c, err := startChild("bridge", []string{self}, []string{envBridge + "=" + string(raw)}, logPath, nil,
		func(line string) bool { return line == bridgeReady })
	if err != nil {
		return nil, err
	}
	if err := c.waitReady(ctx, 30*time.Second, nil); err != nil {
		_ = c.stop(5 * time.Second)
		return nil, err
	}
	return c, nil
}
