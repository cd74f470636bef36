package agent

import (
	"strings"
	"testing"

	"github.com/ferry-edge/ferry/config"
)

// TestURLErrorRedacted: an MQTT URL that does not parse is reported without
// its password (url.Parse's error quotes the whole URL).
func TestURLErrorRedacted(t *testing.T) {
	cfg := &config.Config{MQTT: config.Connections{{URL: "tcp://ferry:Hunter2Secret@broker:18 83"}}}
	_, err := mqttConfig(cfg, 0, config.MQTTFiles{}, nil)
	if err == nil || strings.Contains(err.Error(), "Hunter2Secret") || !strings.Contains(err.Error(), "ferry:xxxxx@broker") {
		t.Errorf("mqttConfig: %v", err)
	}
}
