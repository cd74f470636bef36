package mqtt

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// The CONNACK's grants are compared with the configuration: a shorter
// session expiry, a lower maximum QoS and missing shared subscriptions
// are each warned about; a broker that grants all says nothing.
func TestConnackWarnings(t *testing.T) {
	u, _ := url.Parse("tcp://127.0.0.1:1883")
	in, err := New(Config{URL: u, ClientID: "ferry-test", SessionExpiry: 24 * time.Hour, Subscriptions: []Subscription{
		{Filter: "sensors/#", QoS: 2},
		{Filter: "$share/gw/plant/#", QoS: 1},
	}}, &topicSink{})
	if err != nil {
		t.Fatal(err)
	}
	expiry, qos := uint32(3600), byte(1)
	grudging := &paho.Connack{Properties: &paho.ConnackProperties{SessionExpiryInterval: &expiry, MaximumQoS: &qos, SharedSubAvailable: false}}
	w := strings.Join(in.connackWarnings(grudging), "\n")
	for _, want := range []string{"keeps ferry's session for 1h0m0s", "supports QoS 1 at most; subscription \"sensors/#\" asks for 2", "does not support shared subscriptions; \"$share/gw/plant/#\""} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings lack %q:\n%s", want, w)
		}
	}
	full, two := uint32(24*3600), byte(2)
	generous := &paho.Connack{Properties: &paho.ConnackProperties{SessionExpiryInterval: &full, MaximumQoS: &two, SharedSubAvailable: true}}
	if w := in.connackWarnings(generous); len(w) != 0 {
		t.Errorf("warnings for a broker that grants everything: %q", w)
	}
}
