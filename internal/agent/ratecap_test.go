package agent

import (
	"testing"

	"github.com/ferry-edge/ferry/config"
)

// forward.max_bytes_per_second reaches the forwarder, off when absent.
func TestForwardConfigRateCap(t *testing.T) {
	env := config.Env{Lookup: func(string) (string, bool) { return "", false }, Hostname: func() (string, error) { return "gw", nil }}
	for doc, want := range map[string]int{
		"":                               0,
		"  max_bytes_per_second: 50KB\n": 50_000,
		"  max_bytes_per_second: 1GiB\n": 1 << 30,
	} {
		cfg, err := config.Parse("f.yaml", []byte("mqtt:\n  url: tcp://127.0.0.1:1883\n  subscriptions: [{filter: s/#}]\n"+
			"forward:\n  kafka: {brokers: [127.0.0.1:9092]}\n  routes: [{match: s/#, topic: t}]\n"+doc), env)
		if err != nil {
			t.Fatal(err)
		}
		fc, err := forwardConfig(cfg, &config.Files{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if fc.MaxBytesPerSecond != want {
			t.Errorf("%q: MaxBytesPerSecond %d, want %d", doc, fc.MaxBytesPerSecond, want)
		}
	}
}
