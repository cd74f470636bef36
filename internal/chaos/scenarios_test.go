//go:build chaos

package chaos

import (
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

// scenarioKill kills ferry with SIGKILL at random moments, p.kills times,
// while about 1,000 msg/s flow; the supervisor restarts it each time.
// Nothing acknowledged may be lost, nothing reordered; duplicates are
// allowed (what was in flight is sent again).
func scenarioKill(t *testing.T, p params, r *row) {
	e := newEnv(t, p, envOptions{})
	e.startFerry()
	f := e.startFlow(0)
	rng := p.rng(t.Name())
	var prev *proc
	for r.kills < p.kills {
		cur := e.sup.waitNext(prev, p.unit.StartTimeout+p.restartDelay+10*time.Second)
		if cur == nil {
			r.note("after %d kills ferry was not started again", r.kills)
			break
		}
		prev = cur
		// A random moment of the process's life: while it opens the
		// buffer and connects, or while the flow runs through it.
		time.Sleep(time.Until(cur.started.Add(time.Duration(rng.Int64N(int64(p.killWithin))))))
		wasReady := isClosed(cur.ready)
		if e.sup.kill(cur) {
			r.kills++
			if !wasReady {
				r.killsBeforeReady++
			}
		}
		<-cur.exited
	}
	if !e.sup.waitReady(60 * time.Second) {
		r.note("ferry not ready 60s after the last kill")
	}
	time.Sleep(2 * time.Second)
	rate := f.rate()
	res := f.stop()
	r.note("%d SIGKILLs, %d of them before READY=1; the flow ran at %.0f msg/s", r.kills, r.killsBeforeReady, rate)
	e.finish(r, res)
	check(t, r, expect{duplicates: true, minAcked: 10000})
	if r.kills < p.kills {
		t.Errorf("ferry was killed %d times, want %d", r.kills, p.kills)
	}
	if rate < 800 {
		t.Errorf("the flow ran at %.0f msg/s, want about 1,000", rate)
	}
}

// scenarioKafkaDown cuts Kafka off for outage while about 1,000 msg/s
// flow: the buffer holds everything and drains in order once Kafka is
// back. Nothing lost, reordered or duplicated; no drops; no exits.
func scenarioKafkaDown(t *testing.T, p params, r *row, outage time.Duration) {
	e := newEnv(t, p, envOptions{})
	e.startFerry()
	f := e.startFlow(0)
	time.Sleep(3 * time.Second)
	e.kafka.SetReachable(false)
	time.Sleep(outage)
	buffered := e.waitMetric("ferry_buffer_records", 0, time.Second)
	e.kafka.SetReachable(true)
	time.Sleep(3 * time.Second)
	rate := f.rate()
	res := f.stop()
	r.note("Kafka unreachable for %v: %.0f records in the buffer at its end; the flow ran at %.0f msg/s", outage, buffered, rate)
	e.finish(r, res)
	check(t, r, expect{minAcked: int(outage.Seconds()) * 800})
	if want := outage.Seconds() * 500; buffered < want {
		t.Errorf("%.0f records buffered at the end of the outage, want at least %.0f: was Kafka cut off?", buffered, want)
	}
}

// scenarioBrokerRestart restarts Mosquitto (persistence on, SIGTERM, down
// for a second) p.brokerRestarts times while about 1,000 msg/s flow.
// ferry reconnects to its persistent session by itself: nothing lost or
// reordered, no exits; duplicates are allowed (acknowledgements cut off
// by the restart make the broker send again).
func scenarioBrokerRestart(t *testing.T, p params, r *row) {
	e := newEnv(t, p, envOptions{persistentBroker: true})
	e.startFerry()
	f := e.startFlow(0)
	for range p.brokerRestarts {
		time.Sleep(3 * time.Second)
		if err := e.broker.Restart(time.Second); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * time.Second)
	res := f.stop()
	r.note("Mosquitto restarted %d times", p.brokerRestarts)
	e.finish(r, res)
	check(t, r, expect{duplicates: true, minAcked: 5000})
}

// scenarioMaxBytes fills a 2 MiB buffer (max_bytes) with Kafka
// unreachable: 20,000 messages, about three times what fits. With
// drop_oldest the oldest go, every one counted (reason max_bytes); with
// block ferry stops acknowledging and the broker keeps the rest. Then
// Kafka returns: what was not dropped arrives in order.
func scenarioMaxBytes(t *testing.T, p params, r *row, policy string) {
	e := newEnv(t, p, envOptions{kafkaDown: true, bufferKeys: []string{"max_bytes: 2MiB", "when_full: " + policy}})
	e.startFerry()
	res := e.publish(0, 20, 1000)
	committed := e.waitMetric("ferry_buffer_messages_committed_total", float64(res.Total()), 10*time.Second)
	used := e.waitMetric("ferry_buffer_used_bytes", 0, time.Second)
	r.note("when_full: %s, Kafka unreachable: the broker acknowledged %d, ferry committed %.0f, buffer in use %.0f bytes", policy, res.Total(), committed, used)
	e.kafka.SetReachable(true)
	e.finish(r, res)
	switch policy {
	case "drop_oldest":
		check(t, r, expect{loss: lossMaxBytes, counted: true, minAcked: 20000})
		if r.dropped["max_bytes"] == 0 {
			t.Errorf("no drops at max_bytes: the scenario did not fill the buffer")
		}
	case "block":
		check(t, r, expect{minAcked: 20000})
		if committed >= float64(res.Total()) {
			t.Errorf("ferry committed all %d messages into a 2 MiB buffer: it did not block at max_bytes", res.Total())
		}
	}
}

// tmpfsSize is the full disk: small enough that 40,000 messages fill it.
const tmpfsSize = "8m"

// scenarioDiskFull puts the buffer on a small tmpfs and, with Kafka
// unreachable, publishes until the file system is full, holding it full
// for p.diskHold; then Kafka returns. ferry must not lose acknowledged
// messages unless it counted them (a drop policy), and may stop once and
// come back, but not crash-loop.
func scenarioDiskFull(t *testing.T, p params, r *row) {
	mnt := mountTmpfs(t, tmpfsSize)
	e := newEnv(t, p, envOptions{kafkaDown: true, bufferDir: mnt})
	e.startFerry()

	var peak float64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, usedFraction(mnt))
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	res := e.publish(0, 40, 1000)
	time.Sleep(p.diskHold)
	close(stop)
	<-done
	r.note("tmpfs of %s, Kafka unreachable, 40,000 messages: the file system was at most %.0f%% full; held for %v", tmpfsSize, 100*peak, p.diskHold)
	e.kafka.SetReachable(true)
	e.finish(r, res)
	check(t, r, expect{loss: lossAnyDrop, counted: true, duplicates: true, maxOwnExits: 1, minAcked: 40000})
	if peak < 0.9 {
		t.Errorf("the file system was at most %.0f%% full: the scenario did not fill the disk", 100*peak)
	}
}

// scenarioDamaged leaves 5,000 records in the buffer (Kafka unreachable,
// ferry stopped with SIGTERM), damages the file with damage, starts ferry,
// lets Kafka back and publishes 2,000 more. ferry must keep running (or
// come back by itself); whatever it cannot salvage must be counted (but
// for uncountable: see expect); the
// messages after the restart must all arrive.
func scenarioDamaged(t *testing.T, p params, r *row, damage func(path string, rng *rand.Rand) (string, error), uncountable int) {
	e := newEnv(t, p, envOptions{kafkaDown: true})
	e.startFerry()
	res := e.publish(0, 10, 500)
	if c := e.waitMetric("ferry_buffer_messages_committed_total", float64(res.Total()), 30*time.Second); c < float64(res.Total()) {
		t.Fatalf("ferry committed %.0f of %d messages", c, res.Total())
	}
	if end, ok := e.sup.stop(); !ok || end.String() != "0" {
		t.Fatalf("SIGTERM with Kafka down: ferry ended with %v (stopped: %v), want exit 0", end, ok)
	}
	what, err := damage(e.bufferPath, p.rng(t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	r.note("buffer with %d records: %s", res.Total(), what)
	e.sup.start()
	if !e.sup.waitReady(30 * time.Second) {
		r.note("ferry not ready 30s after it was started on the damaged file")
	}
	e.kafka.SetReachable(true)
	after := e.publish(10, 10, 200)
	res.Merge(after)
	e.finish(r, res)
	check(t, r, expect{loss: lossAnyCounted, counted: true, duplicates: true, minAcked: 7000, uncountable: uncountable})
	// Damage to the structure moves the file aside; damage inside
	// records is found by their checksums and dead-lettered. Either
	// way it must show.
	if r.corrupt < 1 && sum(r.deadLettered)+sum(r.dropped) == 0 {
		t.Errorf("no file moved aside and nothing dead-lettered or dropped: the damage was not found")
	}
	if rep := e.collector.Report(after); rep.Lost > 0 {
		t.Errorf("lost %d of the %d messages published after the restart on the damaged file", rep.Lost, rep.Sent)
	}
}

// scenarioDeleted deletes the buffer file while ferry runs with 3,000
// records in it (Kafka unreachable), publishes 3,000 more, restarts ferry
// (systemctl restart); then deletes it again and restarts at once, with
// nothing published in between (ferry must notice at its stop); lets
// Kafka back and publishes 2,000 more. Nothing ferry acknowledged may be
// lost: it writes the file back from the descriptor it holds.
func scenarioDeleted(t *testing.T, p params, r *row) {
	e := newEnv(t, p, envOptions{kafkaDown: true})
	e.startFerry()
	res := e.publish(0, 10, 300)
	if c := e.waitMetric("ferry_buffer_messages_committed_total", float64(res.Total()), 30*time.Second); c < float64(res.Total()) {
		t.Fatalf("ferry committed %.0f of %d messages", c, res.Total())
	}
	if err := os.Remove(e.bufferPath); err != nil {
		t.Fatal(err)
	}
	res.Merge(e.publish(10, 10, 300))
	committed := e.waitMetric("ferry_buffer_messages_committed_total", float64(res.Total()), 10*time.Second)
	time.Sleep(2 * time.Second) // time to notice
	_, statErr := os.Stat(e.bufferPath)
	end, stopped := e.sup.restart()
	r.note("buffer file deleted with %d records in it, %d more published (ferry committed %.0f in all); before the restart the path %s; the restart's stop: %v (stopped: %v)",
		3000, res.Total()-3000, committed, existence(statErr), end, stopped)
	if !e.sup.waitReady(30 * time.Second) {
		r.note("ferry not ready 30s after the restart")
	}
	// Deleted while idle, then a clean stop at once: no commit, no tick.
	if err := os.Remove(e.bufferPath); err != nil {
		t.Fatal(err)
	}
	end, stopped = e.sup.restart()
	r.note("deleted again while idle and restarted at once: the stop %v (stopped: %v)", end, stopped)
	if !e.sup.waitReady(30 * time.Second) {
		r.note("ferry not ready 30s after the second restart")
	}
	e.kafka.SetReachable(true)
	res.Merge(e.publish(20, 10, 200))
	e.finish(r, res)
	check(t, r, expect{duplicates: true, minAcked: 8000})
}

func existence(err error) string {
	if err == nil {
		return "existed again"
	}
	return "did not exist"
}
