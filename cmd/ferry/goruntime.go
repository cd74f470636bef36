package main

import "runtime"

// ferry's defaults for the Go runtime, which main applies (for every
// command; `ferry run` logs them) unless the environment sets the variable
// (GOMAXPROCS, in the unit's Environment= or a drop-in) to let an operator
// choose otherwise.
//
// One P: at the rates gateways run, ferry's goroutines hand each message
// batch from one to the next (reader, ingest, forwarder, Kafka client,
// acknowledger). With a second P, each hand-off also wakes an idle thread
// that spins looking for work, steals or sleeps again: futex wakeups and
// short sleeps that cost more than the work. With one P the hand-offs stay
// on one thread. Measured with `go run ./cmd/ferry-bench -rate 1000` on 2
// cores: 8.3-10.1 instead of 11.2-12.7 CPU-s per 100k messages, the same
// p99; flat out (-rate 0) 23,700-27,700 instead of 24,100-26,600 msg/s at
// 1.5-1.7 instead of 1.8-2.0 CPU-s per 100k, and a peak RSS 5 MB lower.
// ferry's work is one ordered stream, so a second core would mostly run
// the MQTT broker or the compression of the next batch, not more of ferry.
const defaultMaxProcs = 1

// runtimeDefaults applies ferry's runtime defaults where getenv (os.Getenv)
// leaves them to ferry.
func runtimeDefaults(getenv func(string) string) {
	if getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(defaultMaxProcs)
	}
}
