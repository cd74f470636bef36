package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ferry-edge/ferry/config"
	"github.com/ferry-edge/ferry/internal/admin"
	"github.com/ferry-edge/ferry/internal/agent"
)

// statusReport is what a running ferry tells `ferry status` over its
// admin socket.
type statusReport struct {
	Version     string         `json:"version"`
	Commit      string         `json:"commit"`
	PID         int            `json:"pid"`
	Started     time.Time      `json:"started"`
	Ready       bool           `json:"ready"`
	NotReady    string         `json:"not_ready,omitempty"`
	Healthy     bool           `json:"healthy"`
	Unhealthy   string         `json:"unhealthy,omitempty"`
	MQTTURL     string         `json:"mqtt_url"` // the first connection's; Flow.MQTT has each
	Kafka       []string       `json:"kafka"`
	Buffer      string         `json:"buffer"`
	Oldest      time.Time      `json:"oldest,omitzero"`
	FileSize    int64          `json:"file_size"`
	AdminListen string         `json:"admin_listen"`
	Flow        agent.Snapshot `json:"flow"`
}

// statusFunc returns what /v1/status serves for a.
func statusFunc(cfg *config.Config, a *agent.Agent) func() any {
	started := time.Now()
	return func() any {
		r := statusReport{
			Version: version, Commit: commit, PID: os.Getpid(), Started: started,
			MQTTURL: config.RedactURL(cfg.MQTT[0].URL), Kafka: cfg.Forward.Kafka.Brokers, Buffer: cfg.Buffer.Path,
			AdminListen: cfg.Admin.Listen, Flow: a.Snapshot(),
		}
		r.Ready, r.NotReady = a.Ready()
		r.Healthy, r.Unhealthy = a.Healthy()
		if info, err := a.BufferInfo(); err == nil {
			r.Oldest, r.FileSize = info.Oldest, info.FileSize
		}
		return r
	}
}

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	cfg, ok := loadConfig("status", args, stderr)
	if !ok {
		return exitUsage
	}
	c := admin.NewClient(admin.SocketPath(cfg.Buffer.Path))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var r statusReport
	if err := c.Status(ctx, &r); err != nil {
		if errors.Is(err, admin.ErrNotServing) {
			fmt.Fprintf(stderr, "ferry status: ferry is not running on %s (%v)\n", cfg.Buffer.Path, err)
		} else {
			fmt.Fprintf(stderr, "ferry status: %v\n", err)
		}
		return exitFailure
	}
	writeStatus(stdout, r, time.Now())
	return exitOK
}

// writeStatus prints r as a few aligned lines.
func writeStatus(w io.Writer, r statusReport, now time.Time) {
	f := r.Flow
	state := "ready"
	if !r.Ready {
		state = "NOT READY: " + r.NotReady
	}
	if r.Healthy {
		state += ", healthy"
	} else {
		state += ", STUCK: " + r.Unhealthy
	}
	mqtt := "connected, subscribed"
	if !f.MQTTConnected {
		mqtt = "DISCONNECTED"
	} else if !f.MQTTSubscribed {
		mqtt = "connected, NOT subscribed"
	}
	if f.MQTTSessionsLost > 0 {
		mqtt += fmt.Sprintf(", %d SESSIONS LOST by the broker (what it had queued for ferry is gone)", f.MQTTSessionsLost)
	}
	oldest := ""
	if !r.Oldest.IsZero() {
		oldest = ", oldest " + now.Sub(r.Oldest).Truncate(time.Second).String()
	}
	kafkaErr := "none"
	if f.KafkaError != "" {
		kafkaErr = f.KafkaError
	}
	metrics := "off"
	if r.AdminListen != "" {
		metrics = "http://" + r.AdminListen + "/metrics"
	}
	fmt.Fprintf(w, "ferry %s (commit %s), pid %d, up %v\n", r.Version, short(r.Commit), r.PID, now.Sub(r.Started).Truncate(time.Second))
	fmt.Fprintf(w, "state          %s\n", state)
	if len(f.MQTT) > 1 {
		// Several connections: one line each.
		for _, c := range f.MQTT {
			fmt.Fprintf(w, "mqtt %-9s %s: %s; received %d, committed %d\n", c.Name, c.URL, connState(c), c.Received, c.Committed)
		}
	} else {
		fmt.Fprintf(w, "mqtt           %s: %s; received %d, committed %d\n", r.MQTTURL, mqtt, f.Received, f.Committed)
	}
	fmt.Fprintf(w, "buffer         %s: %d records (%s)%s; file %s\n", r.Buffer, f.BufferRecords, humanBytes(f.BufferBytes), oldest, humanBytes(uint64(max(r.FileSize, 0))))
	fmt.Fprintf(w, "kafka          %s: %d connections; forwarded %d, in flight %d, retries %d; error: %s\n",
		strings.Join(r.Kafka, ","), f.KafkaConns, f.Delivered, f.InFlight, f.KafkaRetries, kafkaErr)
	fmt.Fprintf(w, "dropped        %s\n", counts(f.Dropped))
	fmt.Fprintf(w, "dead-lettered  %s\n", counts(f.DeadLettered))
	if f.CommitError != "" {
		fmt.Fprintf(w, "COMMITS FAIL   %s (disk full: %v; records wait in memory, unacknowledged)\n", f.CommitError, f.DiskFull)
	}
	if f.CorruptFiles > 0 {
		fmt.Fprintf(w, "corrupt files  %d moved aside next to the buffer (ferry buffer verify --salvage)\n", f.CorruptFiles)
	}
	fmt.Fprintf(w, "metrics        %s\n", metrics)
}

func short(commit string) string {
	if commit == "" {
		return "unknown"
	}
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

// counts prints the non-zero counts by reason, or "none".
func counts(m map[string]uint64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// connState says how one MQTT connection stands.
func connState(c agent.MQTTConnection) string {
	s := "connected, subscribed"
	if !c.Connected {
		s = "DISCONNECTED"
	} else if !c.Subscribed {
		s = "connected, NOT subscribed"
	}
	if c.SessionsLost > 0 {
		s += fmt.Sprintf(", %d SESSIONS LOST by the broker", c.SessionsLost)
	}
	return s
}
