package mqtt

import (
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// A session that holds a filter ferry has no record of (a ferry from
// before the state file, a record lost or moved) keeps it; its messages
// are dropped and counted on every run, not only the first.
func TestUnrecordedFilterIsNotForwardedOnLaterRuns(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "needs a resumed session")
	u, _ := url.Parse(broker.URL())
	old := Config{URL: u, Subscriptions: []Subscription{{Filter: "legacy/#", QoS: 1}, {Filter: "sensors/+/telemetry", QoS: 1}}}
	_, done, cancel := startIngestWith(t, old, &topicSink{}, nil) // a ferry without a state file
	stopIngest(t, done, cancel)
	cfg := Config{URL: u, StateFile: filepath.Join(t.TempDir(), "buffer.db.subscriptions"), Subscriptions: []Subscription{{Filter: "sensors/+/telemetry", QoS: 1}}}
	_, done, cancel = startIngestWith(t, cfg, &topicSink{}, nil)
	stopIngest(t, done, cancel)
	second := &topicSink{}
	_, done, cancel = startIngestWith(t, cfg, second, nil)
	defer cancel()
	pub := publisher(t, broker.Addr)
	publish(t, pub, "legacy/secret/x", 1, "must not be forwarded")
	publish(t, pub, "sensors/a/telemetry", 1, "wanted")
	waitFor(t, 10*time.Second, "the wanted message", func() bool { return second.count("sensors/a/telemetry") == 1 })
	time.Sleep(300 * time.Millisecond)
	if second.count("legacy/secret/x") != 0 {
		t.Errorf("legacy/secret/x forwarded on the second run after the upgrade")
	}
	stopIngest(t, done, cancel)
}
