package agent

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/forward"
	"github.com/ferry-edge/ferry/internal/testenv"
)

// The buffer file damaged under a running ferry (here: cut short): Run
// stops with an error that says so, and the next start (systemd's
// restart) finds the damage, moves the file aside and salvages it.
func TestDamageWhileRunningStopsAndSalvages(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, mochiStalls)
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	cfg := loadConfig(t, broker, kafka, topic, "sync: always")
	kafka.SetReachable(false)
	a, err := New(cfg, testLogger(t), Options{Forward: func(fc *forward.Config) { fc.ShutdownTimeout = time.Second }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	waitFor(t, "ferry to subscribe", 15*time.Second, func() bool { return a.Stats().MQTT.Subscribed })

	pctx, pcancel := context.WithTimeout(ctx, 60*time.Second)
	defer pcancel()
	res, err := testenv.StartSensors(pctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 4, PerDevice: 500, QoS: 1}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every message committed", 30*time.Second, func() bool { return a.Stats().MQTT.Stored == uint64(res.Total()) })
	if err := os.Truncate(cfg.Buffer.Path, 32<<10); err != nil {
		t.Fatal(err)
	}
	// More messages: their commit meets the damage.
	go testenv.StartSensors(pctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 1, PerDevice: 100, QoS: 1, FirstDevice: 10}).Wait()
	var runErr error
	select {
	case runErr = <-done:
	case <-time.After(60 * time.Second): // ingest waits up to 10 s for acknowledgements that cannot come
		t.Fatal("ferry went on with a damaged buffer file")
	}
	if runErr == nil || !strings.Contains(runErr.Error(), "buffer file damaged") || !errors.Is(runErr, buffer.ErrCorruptFile) {
		t.Fatalf("Run: %v, want the damage", runErr)
	}
	b, aside, err := buffer.OpenOrMoveAside(cfg.Buffer.Path, buffer.Options{})
	if err != nil {
		t.Fatalf("the next start: %v", err)
	}
	defer b.Close()
	if aside == "" {
		t.Fatal("the next start opened the damaged file as it was")
	}
	t.Logf("salvaged %d of %d records; %d counted as lost", b.Stats().Records, res.Total(), b.Stats().Dropped[buffer.DropCorrupt])
}
