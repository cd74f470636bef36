package agent

import (
	"context"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// BenchmarkEndToEnd measures QoS 1 messages per second from sensors through
// the broker, ferry (fsync before every PUBACK) and into Kafka, with the
// broker the tests use (Mosquitto if installed) and kfake. Each op is one
// message; the clock stops when the last one is in Kafka.
//
//	go test -run '^$' -bench EndToEnd -benchtime 50000x ./internal/agent
func BenchmarkEndToEnd(b *testing.B) {
	const devices = 100
	broker := testenv.NewBroker(b)
	testenv.RequireMosquitto(b, broker, mochiStalls)
	kafka := testenv.NewKafka(b)
	topic := testenv.NewTopic(b, kafka)
	cfg := loadConfig(b, broker, kafka, topic)
	a, err := New(cfg, nil, Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- a.Run(ctx) }()
	for !a.Stats().MQTT.Subscribed {
		time.Sleep(10 * time.Millisecond)
	}
	collector, err := testenv.StartCollector(ctx, kafka.Brokers(), topic, kafka.ClientOpts()...)
	if err != nil {
		b.Fatal(err)
	}
	defer collector.Close()

	perDevice := max(1, b.N/devices)
	b.ResetTimer()
	start := time.Now()
	res, err := testenv.RunSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: devices, PerDevice: perDevice, QoS: 1})
	if err != nil {
		b.Fatal(err)
	}
	rep := collector.WaitFor(ctx, res)
	elapsed := time.Since(start)
	b.StopTimer()
	if !rep.OK() {
		b.Fatalf("not delivered intact: %s", rep)
	}
	b.ReportMetric(float64(rep.Sent)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(a.Stats().Buffer.Commits)/float64(rep.Sent), "commits/msg")
	cancel()
	if err := <-runDone; err != nil {
		b.Fatal(err)
	}
}
