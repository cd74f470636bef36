// Package chaos is ferry's chaos suite. Its tests, built only with the
// chaos tag, run the ferry binary as a real child process between a real
// Mosquitto and Kafka (kfake, or the real broker scripts/kafka-test-broker
// starts), under a supervisor that restarts it as systemd would with
// packaging/ferry.service (Restart=, RestartPreventExitStatus=, the
// watchdog), and break what can break on a gateway: ferry killed with
// SIGKILL at random moments while 1,000 msg/s flow, Kafka unreachable,
// Mosquitto restarted, the buffer's max_bytes reached under both policies,
// the disk full, a truncated and a bit-flipped buffer file at startup, the
// buffer file deleted while ferry runs.
//
// For each scenario the suite reads the Kafka topic back and reports what
// the broker acknowledged and what arrived: lost, duplicated and out of
// order messages per device, the records ferry counted as dropped or
// dead-lettered by reason (from its status records), its exits and how
// the supervisor restarted it. Lost and out of order must be 0 except
// where the configured policy says otherwise, every loss must be counted,
// and ferry must keep running or come back by itself.
//
//	go test -tags chaos ./internal/chaos                               # short, as CI runs it
//	FERRY_CHAOS=long go test -tags chaos -timeout 60m ./internal/chaos # the full durations
//
// The README's "Chaos suite" section lists the scenarios and what each
// asserts.
package chaos
