package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/ferry-edge/ferry/internal/agent"
)

// watchdogInterval is systemd's WatchdogSec for this process (from
// WATCHDOG_USEC), or 0 when there is no watchdog.
func watchdogInterval(log *slog.Logger) time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog: ignoring WATCHDOG_USEC", "err", err)
		return 0
	}
	return d
}

// statusInterval is how often the STATUS= line is updated.
const statusInterval = 5 * time.Second

// notifySystemd speaks systemd's notify protocol (Type=notify) while a
// runs, until ctx is done or stop is called: READY=1 once the buffer is
// open and the subscriptions are granted; STATUS= with the flow every few
// seconds; WATCHDOG=1 every half watchdog interval, but only while the
// pipeline is healthy (a stuck stage stops the pings and systemd restarts
// ferry); STOPPING=1 when the clean stop begins. Without NOTIFY_SOCKET it
// does nothing. stop returns once STOPPING=1 is sent.
func notifySystemd(ctx context.Context, a *agent.Agent, watchdog time.Duration, log *slog.Logger) (stop func()) {
	if sent, _ := daemon.SdNotify(false, "STATUS=starting: opening the buffer, connecting to the MQTT broker"); !sent {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		notify := func(state string) {
			if _, err := daemon.SdNotify(false, state); err != nil {
				log.Warn("systemd notify failed", "err", err)
			}
		}
		tick := 250 * time.Millisecond
		if watchdog > 0 {
			tick = min(tick, watchdog/2)
		}
		t := time.NewTicker(tick)
		defer t.Stop()
		ready := false
		var lastPing, lastStatus time.Time
		lastWhy := ""
		for {
			select {
			case <-ctx.Done():
				notify("STOPPING=1\nSTATUS=stopping: ingest first, then the forwarder, then the buffer")
				return
			case now := <-t.C:
				if !ready {
					if ok, _ := a.Ready(); ok {
						ready = true
						notify("READY=1\nSTATUS=" + flowStatus(a.Snapshot()))
						log.Info("ready: buffer open, subscriptions granted")
						lastStatus = now
					}
				}
				if watchdog > 0 && now.Sub(lastPing) >= watchdog/2 {
					ok, why := a.Healthy()
					if ok {
						notify("WATCHDOG=1")
						lastPing = now
					}
					if why != lastWhy {
						if why != "" {
							log.Error("pipeline stuck: no more watchdog pings, systemd will restart ferry", "why", why)
							notify("STATUS=stuck: " + why)
						} else {
							log.Info("pipeline moving again: watchdog pings resumed")
						}
						lastWhy = why
					}
				}
				if ready && lastWhy == "" && now.Sub(lastStatus) >= statusInterval {
					notify("STATUS=" + flowStatus(a.Snapshot()))
					lastStatus = now
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// flowStatus is the one-line summary systemctl status shows.
func flowStatus(s agent.Snapshot) string {
	kafka := "Kafka ok"
	if s.KafkaError != "" {
		kafka = "Kafka: " + s.KafkaError
	}
	mqtt := "MQTT subscribed"
	if !s.MQTTConnected {
		mqtt = "MQTT disconnected"
	} else if !s.MQTTSubscribed {
		mqtt = "MQTT connected, not subscribed"
	}
	return fmt.Sprintf("received %d, buffered %d (%s), forwarded %d; %s; %s",
		s.Received, s.BufferRecords, humanBytes(s.BufferBytes), s.Delivered, mqtt, kafka)
}

// humanBytes formats n in decimal units: 512 B, 3.4 kB, 12.0 MB.
func humanBytes(n uint64) string {
	if n < 1000 {
		return fmt.Sprintf("%d B", n)
	}
	f, units := float64(n)/1000, []string{"kB", "MB", "GB", "TB"}
	i := 0
	for f >= 1000 && i < len(units)-1 {
		f /= 1000
		i++
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// extendStartWhile asks systemd for another minute of start time every 20
// seconds until done is closed (Type=notify: EXTEND_TIMEOUT_USEC); it does
// nothing when not started by systemd.
func extendStartWhile(done <-chan struct{}) {
	t := time.NewTicker(20 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if sent, _ := daemon.SdNotify(false, "EXTEND_TIMEOUT_USEC=60000000\nSTATUS=starting: checking or salvaging the buffer file"); !sent {
				return
			}
		}
	}
}
