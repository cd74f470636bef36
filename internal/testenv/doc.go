// Package testenv starts the real parts around ferry for its end-to-end
// tests, its sandbox program and its benchmark tool: an MQTT broker
// (Mosquitto as a child process, or the embedded mochi broker), a fake Kafka
// cluster (kfake) whose network can be cut, simulated sensors that publish
// numbered JSON messages, and a collector that reads the Kafka topic back and
// reports what was lost, duplicated or reordered.
//
// Everything listens on 127.0.0.1 only. The core API returns errors and takes
// no *testing.T, so programs can use it; NewBroker and NewKafka are thin test
// helpers on top that register cleanups.
//
// Both brokers are configured for ferry's no-loss setup: a persistent MQTT v5
// session (clean start false, session expiry set) subscribed at QoS 1 keeps
// every QoS 1 message published while its client is away, and redelivers
// unacknowledged ones when the client returns with the same client id. The
// broker itself is not durable unless started with
// MosquittoOptions.Persistence, which lets a test restart it (Broker.Restart)
// without losing what it acknowledged.
package testenv
