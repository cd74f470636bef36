package testenv

import "fmt"

// FerryConfig returns a ferry configuration file, shaped like the README's
// example, that subscribes to the sensors' topics on b and routes them to
// topic on k, keyed by device, buffering at bufferPath.
func FerryConfig(b *Broker, k *Kafka, topic, bufferPath string) string {
	return fmt.Sprintf(`gateway_id: gw-test
log:
  level: info
mqtt:
  url: %s
  client_id: ferry-gw-test
  subscriptions:
    - filter: sensors/+/telemetry
      qos: 1
buffer:
  path: %q
forward:
  kafka:
%s  routes:
    - match: sensors/{device}/telemetry
      topic: %s
      key: "{device}"
`, b.URL(), bufferPath, k.FerryYAML(), topic)
}
