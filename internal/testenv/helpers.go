package testenv

import (
	"os"
	"testing"
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

// NewKafka starts a fake Kafka cluster for a test as StartKafka does and
// closes it when the test ends.
func NewKafka(t testing.TB, topics ...string) *Kafka {
	t.Helper()
	k, err := StartKafka(topics...)
	if err != nil {
		t.Fatalf("start kafka: %v", err)
	}
	t.Cleanup(k.Close)
	return k
}
