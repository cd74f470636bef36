package testenv

import (
	"context"
	"os"
	"testing"
	"time"
)

// EnvRequireMosquitto names the environment variable that, set to "1",
// makes NewBroker fail instead of falling back to mochi when Mosquitto is
// not installed.
const EnvRequireMosquitto = "FERRY_REQUIRE_MOSQUITTO"

// NewBroker starts a broker for a test as StartBroker does, in t.TempDir(),
// logs which kind it is and closes it when the test ends.
func NewBroker(t testing.TB) *Broker {
	t.Helper()
	if _, err := FindMosquitto(); err != nil && os.Getenv(EnvRequireMosquitto) == "1" {
		t.Fatalf("%s=1 but Mosquitto is not available: %v (install the mosquitto package or unset %s to use the embedded mochi broker)",
			EnvRequireMosquitto, err, EnvRequireMosquitto)
	}
	b, err := StartBroker(t.TempDir(), nil)
	if err != nil {
		t.Fatalf("start MQTT broker: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close %s broker: %v", b.Kind, err)
		}
	})
	t.Logf("MQTT broker: %s at %s", b.Kind, b.URL())
	return b
}

// NewKafka gives a test its Kafka: the real broker the environment names
// (EnvKafka, see scripts/kafka-test-broker), else a kfake cluster started as
// StartKafka does and closed when the test ends. It logs which.
func NewKafka(t testing.TB, topics ...string) *Kafka {
	t.Helper()
	if UsingRealKafka() {
		k, err := ConnectRealKafka()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(k.Close)
		t.Logf("Kafka: %s", k)
		return k
	}
	k, err := StartKafka(topics...)
	if err != nil {
		t.Fatalf("start kafka: %v", err)
	}
	t.Cleanup(k.Close)
	t.Logf("Kafka: %s", k)
	return k
}

// NewTopic creates a topic with a unique name for a test.
func NewTopic(t testing.TB, k *Kafka) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := UniqueTopic("telemetry")
	if err := k.CreateTopic(ctx, name); err != nil {
		t.Fatal(err)
	}
	return name
}

// RequireMosquitto skips a test that the embedded mochi broker cannot serve
// faithfully (why says what it lacks), or fails it when EnvRequireMosquitto
// is set.
func RequireMosquitto(t testing.TB, b *Broker, why string) {
	t.Helper()
	if b.Kind == KindMosquitto {
		return
	}
	if os.Getenv(EnvRequireMosquitto) == "1" {
		t.Fatalf("%s=1 but the broker is %s; this test needs Mosquitto: %s", EnvRequireMosquitto, b.Kind, why)
	}
	t.Skipf("needs Mosquitto (install the mosquitto package): %s", why)
}

// NewMosquitto starts Mosquitto with opts for a test (TLS listener,
// users), in t.TempDir(), and stops it when the test ends. Where the tests
// run on the embedded broker (no Mosquitto, or FERRY_TEST_BROKER=mochi),
// the test is skipped, or fails with EnvRequireMosquitto set; why says what
// mochi lacks.
func NewMosquitto(t testing.TB, opts MosquittoOptions, why string) *Broker {
	t.Helper()
	_, err := FindMosquitto()
	if err != nil || os.Getenv(EnvBroker) == KindMochi {
		if os.Getenv(EnvRequireMosquitto) == "1" {
			t.Fatalf("%s=1 but Mosquitto is not used (%v); this test needs it: %s", EnvRequireMosquitto, err, why)
		}
		t.Skipf("needs Mosquitto (install the mosquitto package): %s", why)
	}
	b, err := StartMosquittoWith(t.TempDir(), nil, opts)
	if err != nil {
		t.Fatalf("start Mosquitto: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close mosquitto: %v", err)
		}
	})
	t.Logf("MQTT broker: mosquitto at %s (TLS %q)", b.URL(), b.TLSAddr)
	return b
}
