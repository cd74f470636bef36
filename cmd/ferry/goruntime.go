package main

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// ferry's defaults for the Go runtime, which main applies (for every
// command; `ferry run` logs them) unless the environment sets the variable
// (GOMAXPROCS or GOGC, in the unit's Environment= or a drop-in) to let an
// operator choose otherwise.
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

// GOGC 50: the heap grows to half again its live data between two
// collections instead of twice it. ferry's live heap is small and mostly
// records passing through, so the collector's extra work costs little
// next to the memory a gateway gets back. Measured with ferry-bench
// (Mosquitto, kfake, 2 vCPUs), GOGC 100 against 50 in one sitting: flat
// out (-rate 0), peak RSS 30.4-34.1 against 26.6-28.2 MB (14.5-18.2
// against 11.2-12.6 MB anonymous) at 1.41-1.55 against 1.47-1.64 CPU-s per
// 100k messages; a 1-million-record drain (-rate 0 -backlog 1000000)
// 77.1-77.6 against 68.5-69.1 MB, as fast (140,000-161,000 msg/s); at
// -rate 1000 no difference beyond the noise (8.15 against 8.15-8.80 CPU-s
// per 100k, p99 13.3 against 13.3-13.8 ms). GOGC 25 went further (26.0 MB
// flat out, 58.8 MB for the drain) but drained 20% slower.
const defaultGCPercent = 50

// runtimeDefaults applies ferry's runtime defaults where getenv (os.Getenv)
// leaves them to ferry.
func runtimeDefaults(getenv func(string) string) {
	if getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(defaultMaxProcs)
	}
	if getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
}

// gcPercent is the collector's GOGC in force (-1: off).
func gcPercent() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0 // not reported by this runtime
	}
	return int(int64(s[0].Value.Uint64())) // GOGC=off (-1) reads as the uint64 of -1
}
