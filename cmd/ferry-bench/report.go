package main

import (
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// Report is everything a run measured; --json prints it as one object.
// Figures that were not measured are null (or absent), never a 0 that
// looks measured.
type Report struct {
	Setup    Setup           `json:"setup"`
	Ferry    *PhaseReport    `json:"ferry,omitempty"`
	Idle     *IdleReport     `json:"idle,omitempty"`
	Baseline *BaselineReport `json:"baseline,omitempty"`
	// OK is false if anything acknowledged was lost, anything arrived out
	// of order, or a problem was noted.
	OK bool `json:"ok"`
}

// Setup says what was measured and where.
type Setup struct {
	Ferry        string   `json:"ferry"` // `ferry version`
	FerryBinary  string   `json:"ferry_binary"`
	FerrySource  string   `json:"ferry_source"` // the tree and commit it was built from
	Broker       string   `json:"broker"`
	Kafka        string   `json:"kafka"`
	Devices      int      `json:"devices"`
	QoS          int      `json:"qos"`
	PayloadBytes int      `json:"payload_bytes"`
	TargetRate   float64  `json:"target_rate"` // messages per second; 0 is flat out
	Duration     float64  `json:"duration_seconds,omitempty"`
	Messages     int64    `json:"messages,omitempty"`
	Outage       string   `json:"outage,omitempty"`
	ConfigExtra  []string `json:"config_extra,omitempty"`
	Set          []string `json:"set,omitempty"`
	WorkDir      string   `json:"work_dir"`
	FileSystem   string   `json:"file_system"`
	CPUs         int      `json:"cpus"`
}

// PhaseReport is one system under one load.
type PhaseReport struct {
	Name string `json:"name"`
	// Sent counts distinct messages published; Acknowledged those the
	// broker acknowledged (PUBACK for QoS 1, PUBCOMP for QoS 2, the write
	// for QoS 0).
	Sent         int64 `json:"sent"`
	Acknowledged int64 `json:"acknowledged"`
	// Delivered counts distinct messages that arrived (in Kafka, or at the
	// subscriber); Lost the acknowledged ones that did not.
	Delivered  int64 `json:"delivered"`
	Lost       int64 `json:"lost"`
	Duplicates int64 `json:"duplicates"`
	// OutOfOrder counts first copies with a lower seq than one of the same
	// device that arrived before it.
	OutOfOrder int64 `json:"out_of_order"`
	// DeliveredUnacknowledged arrived though the publisher saw no
	// acknowledgement (a connection dropped): not an error.
	DeliveredUnacknowledged int64    `json:"delivered_unacknowledged"`
	Republished             int64    `json:"republished"`
	PublishErrors           int64    `json:"publish_errors"`
	BehindSchedule          int64    `json:"behind_schedule"` // messages the rate asked for that were never sent
	Unparsed                int64    `json:"unparsed"`
	SplitDevices            int64    `json:"split_devices"`
	LostSample              []string `json:"lost_sample,omitempty"`
	// PublishRate is acknowledged messages per second of publishing;
	// MsgsPerSec is delivered messages per second from the first publish
	// to the last arrival: the end-to-end throughput.
	PublishRate    float64        `json:"publish_rate"`
	MsgsPerSec     float64        `json:"msgs_per_sec"`
	PublishSeconds float64        `json:"publish_seconds"`
	Latency        LatencyReport  `json:"latency_ms"`
	Process        *ProcessReport `json:"process,omitempty"`
	Host           HostReport     `json:"host"`
	PeakBacklog    int64          `json:"peak_backlog"` // acknowledged, not yet arrived
	Outage         *OutageReport  `json:"outage,omitempty"`
	Problems       []string       `json:"problems,omitempty"`
}

// LatencyReport is the time from a message's send (stamped in its payload
// just before the publish) to its arrival: for Kafka, when the consumer's
// fetch returned it, so one fetch round trip is included.
type LatencyReport struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// ProcessReport is the measured process (ferry, or the bridge) over the
// window from the first publish to the last arrival.
type ProcessReport struct {
	PID               int     `json:"pid"`
	WindowSeconds     float64 `json:"window_seconds"`
	CPUSeconds        float64 `json:"cpu_seconds"`
	CPUPercent        float64 `json:"cpu_percent"` // of one core
	CPUSecondsPer100k float64 `json:"cpu_seconds_per_100k"`
	PeakRSSMB         float64 `json:"peak_rss_mb"` // VmHWM: since the process started
	// PeakAnonRSSMB is the highest RssAnon sampled every 100 ms: the
	// peak without mapped files (the binary, bbolt's mmap of the buffer:
	// pages the kernel can drop and read again).
	PeakAnonRSSMB float64    `json:"peak_anon_rss_mb"`
	RSSMB         float64    `json:"rss_mb"` // at the end of the window
	Disk          DiskReport `json:"disk"`
	// BufferCommits is ferry's ferry_buffer_commits_total over the
	// window (one fsync each); null when not scraped.
	BufferCommits     *float64 `json:"buffer_commits,omitempty"`
	MessagesPerCommit *float64 `json:"messages_per_commit,omitempty"`
}

// DiskReport is what the process wrote to storage: write_bytes of
// /proc/PID/io, the page-cache pages it dirtied (whole pages; the file
// system's journal is not charged to it).
type DiskReport struct {
	WriteBytes          *int64   `json:"write_bytes"`
	BytesPerPayloadByte *float64 `json:"bytes_per_payload_byte"`
	CancelledBytes      *int64   `json:"cancelled_write_bytes,omitempty"`
	// NotMeasured says why WriteBytes is null.
	NotMeasured string `json:"not_measured,omitempty"`
	// BufferFileGrowth is how much the buffer file grew: a fallback
	// hint when write_bytes is not measured, NOT bytes written.
	BufferFileGrowth *int64 `json:"buffer_file_growth_bytes,omitempty"`
}

// HostReport is the machine over the window.
type HostReport struct {
	BusyPercent       float64 `json:"busy_percent"`        // of all CPUs, everything on the machine
	HarnessCPUSeconds float64 `json:"harness_cpu_seconds"` // ferry-bench itself: publishers, kfake, consumer (and mochi)
	// BrokerCPUSeconds is Mosquitto's; null for mochi, which is part of
	// the harness.
	BrokerCPUSeconds *float64 `json:"broker_cpu_seconds"`
}

// OutageReport describes a Kafka outage.
type OutageReport struct {
	AtSeconds float64 `json:"at_seconds"`
	Seconds   float64 `json:"seconds"`
	Backlog   int64   `json:"backlog"` // acknowledged, not in Kafka, when it came back
	// DrainSeconds is the time from Kafka's return until everything
	// acknowledged before it was in Kafka; DrainMsgsPerSec the arrivals
	// per second meanwhile (messages published during the drain
	// included). Null if it did not drain.
	DrainSeconds    *float64 `json:"drain_seconds"`
	DrainMsgsPerSec *float64 `json:"drain_msgs_per_sec"`
	// FirstArrivalSeconds is the time from Kafka's return to the first
	// record arriving: mostly the time ferry takes to notice (its
	// reconnection backoff). DrainOnlyMsgsPerSec is DrainMsgsPerSec
	// counted from that first arrival.
	FirstArrivalSeconds *float64 `json:"first_arrival_seconds"`
	DrainOnlyMsgsPerSec *float64 `json:"drain_from_first_arrival_msgs_per_sec"`
}

// IdleReport is ferry with no messages.
type IdleReport struct {
	Seconds           float64    `json:"seconds"`
	CPUSeconds        float64    `json:"cpu_seconds"`
	CPUPercent        float64    `json:"cpu_percent"` // of one core
	CPUSecondsPerHour float64    `json:"cpu_seconds_per_hour"`
	PeakRSSMB         float64    `json:"peak_rss_mb"`
	PeakAnonRSSMB     float64    `json:"peak_anon_rss_mb"` // sampled every second
	RSSMB             float64    `json:"rss_mb"`
	Disk              DiskReport `json:"disk"`
	WriteBytesPerHour *float64   `json:"write_bytes_per_hour"`
	BufferCommits     *float64   `json:"buffer_commits,omitempty"`
	HostBusyPercent   float64    `json:"host_busy_percent"`
	Problems          []string   `json:"problems,omitempty"`
}

// BaselineReport holds the ceilings and ferry's throughput as a fraction
// of each.
type BaselineReport struct {
	BrokerAlone *PhaseReport  `json:"broker_alone"`
	Bridge      *PhaseReport  `json:"bridge_no_disk"`
	Disk        DiskBaseline  `json:"disk_alone"`
	DiskSingle  DiskBaseline  `json:"disk_alone_single"` // one payload per fdatasync; not a ceiling, for reference
	Kafka       KafkaBaseline `json:"kafka_alone"`
	Ceilings    []Ceiling     `json:"ceilings"`
	Lowest      string        `json:"lowest"`
	// FerryFraction is ferry's msgs/s over the lowest ceiling.
	FerryFraction float64 `json:"ferry_fraction_of_lowest"`
}

// Ceiling is one baseline's throughput.
type Ceiling struct {
	Name          string  `json:"name"`
	MsgsPerSec    float64 `json:"msgs_per_sec"`
	FerryFraction float64 `json:"ferry_fraction"`
}

// DiskBaseline is the disk-alone measurement.
type DiskBaseline struct {
	Batch               int      `json:"payloads_per_sync"`
	PayloadsPerSec      float64  `json:"payloads_per_sec"`
	SyncsPerSec         float64  `json:"syncs_per_sec"`
	BytesPerPayloadByte *float64 `json:"bytes_per_payload_byte"`
	NotMeasured         string   `json:"not_measured,omitempty"`
}

// KafkaBaseline is the Kafka-alone measurement.
type KafkaBaseline struct {
	MsgsPerSec float64 `json:"msgs_per_sec"`
	Acked      int64   `json:"acked"`
	Failed     int64   `json:"failed"`
}

// phaseReport turns a phaseResult into its report.
func phaseReport(r *phaseResult, payload int) *PhaseReport {
	d := r.del
	p := &PhaseReport{
		Name: r.name, Sent: r.counts.Sent, Acknowledged: r.counts.Acked,
		Delivered: d.Unique, Lost: d.Lost, Duplicates: d.Duplicates, OutOfOrder: d.OutOfOrder,
		DeliveredUnacknowledged: d.Unacked, Republished: r.counts.Republished, PublishErrors: r.counts.Errors,
		BehindSchedule: r.counts.Unsent, Unparsed: d.Unparsed, SplitDevices: d.Split,
		PublishRate:    rate(r.counts.Acked, r.loadTime),
		PublishSeconds: r.loadTime.Seconds(),
		Latency:        LatencyReport{P50: ms(d.P50), P99: ms(d.P99), Max: ms(d.Max)},
		PeakBacklog:    r.peakBacklog,
		Problems:       r.problems,
	}
	if !d.LastAt.IsZero() {
		p.MsgsPerSec = rate(d.Unique, d.LastAt.Sub(r.start))
	}
	for _, s := range d.LostSample {
		p.LostSample = append(p.LostSample, fmt.Sprintf("dev-%02d#%d", s.device, s.seq))
	}
	if r.counts.LastErr != nil {
		p.Problems = append(p.Problems, fmt.Sprintf("last publish error: %v", r.counts.LastErr))
	}
	if r.win != nil {
		p.Host = HostReport{BusyPercent: 100 * r.win.HostBusy, HarnessCPUSeconds: r.win.SelfCPU.Seconds()}
		if r.win.BrokerCPU >= 0 {
			c := r.win.BrokerCPU.Seconds()
			p.Host.BrokerCPUSeconds = &c
		}
	}
	if r.win != nil && r.win.HWM > 0 {
		w := r.win
		pr := &ProcessReport{
			PID:           r.pid,
			WindowSeconds: w.Elapsed.Seconds(),
			CPUSeconds:    w.CPU.Seconds(),
			CPUPercent:    100 * w.CPU.Seconds() / w.Elapsed.Seconds(),
			PeakRSSMB:     mb(w.HWM),
			PeakAnonRSSMB: mb(r.peakAnon),
			RSSMB:         mb(w.RSS),
			Disk:          diskReport(w.IO, r.counts.Acked, int64(payload), r.fileGrowth),
		}
		if d.Unique > 0 {
			pr.CPUSecondsPer100k = w.CPU.Seconds() / float64(d.Unique) * 1e5
		}
		if c, ok := r.metrics["ferry_buffer_commits_total"]; ok {
			pr.BufferCommits = &c
			if c > 0 {
				per := float64(r.counts.Acked) / c
				pr.MessagesPerCommit = &per
			}
		}
		p.Process = pr
	}
	if o := r.outage; o != nil {
		or := &OutageReport{AtSeconds: o.At.Seconds(), Seconds: o.Length.Seconds(), Backlog: o.BacklogAtEnd}
		if o.Drain > 0 {
			s := o.Drain.Seconds()
			or.DrainSeconds = &s
			dr := float64(o.Drained) / s
			or.DrainMsgsPerSec = &dr
			if o.FirstArrival > 0 && o.FirstArrival < o.Drain {
				f := o.FirstArrival.Seconds()
				or.FirstArrivalSeconds = &f
				d := float64(o.Drained) / (s - f)
				or.DrainOnlyMsgsPerSec = &d
			}
		}
		p.Outage = or
	}
	return p
}

// diskReport interprets write_bytes for messages of payload bytes each.
// A write_bytes of 0 is a measurement: ferry with sync: delayed writes
// nothing while Kafka keeps up. Whether the kernel accounts writes here at
// all is the I/O probe's to say (probeIOAccounting, in io.Err).
func diskReport(io ioCounters, messages, payload, fileGrowth int64) DiskReport {
	var r DiskReport
	if fileGrowth >= 0 {
		r.BufferFileGrowth = &fileGrowth
	}
	switch {
	case io.Err != nil:
		r.NotMeasured = io.Err.Error()
		return r
	}
	wb, cb := io.WriteBytes, io.CancelledBytes
	r.WriteBytes = &wb
	if cb != 0 {
		r.CancelledBytes = &cb
	}
	if messages > 0 && payload > 0 {
		per := float64(wb) / float64(messages*payload)
		r.BytesPerPayloadByte = &per
	}
	return r
}

// idleReport turns an idleResult into its report.
func idleReport(r *idleResult) *IdleReport {
	w := r.win
	sec := w.Elapsed.Seconds()
	ir := &IdleReport{
		Seconds: sec, CPUSeconds: w.CPU.Seconds(), CPUPercent: 100 * w.CPU.Seconds() / sec,
		CPUSecondsPerHour: w.CPU.Seconds() / sec * 3600,
		PeakRSSMB:         mb(w.HWM), PeakAnonRSSMB: mb(r.peakAnon), RSSMB: mb(w.RSS),
		Disk:            diskReport(w.IO, 0, 0, r.fileGrowth),
		HostBusyPercent: 100 * w.HostBusy,
		Problems:        r.problems,
	}
	if ir.Disk.WriteBytes != nil {
		ph := float64(*ir.Disk.WriteBytes) / sec * 3600
		ir.WriteBytesPerHour = &ph
	}
	if c, ok := r.metrics["ferry_buffer_commits_total"]; ok {
		ir.BufferCommits = &c
	}
	return ir
}

// baselineReport turns the ceilings into their report, with ferry's
// msgs/s (0 without a ferry run) as a fraction of each.
func baselineReport(b *baselineResult, ferry float64, payload int) *BaselineReport {
	br := &BaselineReport{
		BrokerAlone: phaseReport(b.Broker, payload),
		Bridge:      phaseReport(b.Bridge, payload),
		Disk:        diskBaseline(b.Disk, payload),
		DiskSingle:  diskBaseline(b.Disk1, payload),
		Kafka:       KafkaBaseline{MsgsPerSec: b.Kafka.perSecond(), Acked: b.Kafka.Acked, Failed: b.Kafka.Failed},
	}
	br.Ceilings = []Ceiling{
		{Name: "broker alone (in-process subscriber, acks at once)", MsgsPerSec: br.BrokerAlone.MsgsPerSec},
		{Name: "bridge, no disk (child: paho -> franz-go, acks at once)", MsgsPerSec: br.Bridge.MsgsPerSec},
		{Name: fmt.Sprintf("disk alone (%d payloads per fdatasync)", b.Disk.Batch), MsgsPerSec: br.Disk.PayloadsPerSec},
		{Name: "Kafka alone (franz-go from memory)", MsgsPerSec: br.Kafka.MsgsPerSec},
	}
	lowest := -1
	for i := range br.Ceilings {
		c := &br.Ceilings[i]
		if c.MsgsPerSec > 0 {
			c.FerryFraction = ferry / c.MsgsPerSec
			if lowest < 0 || c.MsgsPerSec < br.Ceilings[lowest].MsgsPerSec {
				lowest = i
			}
		}
	}
	if lowest >= 0 {
		br.Lowest = br.Ceilings[lowest].Name
		br.FerryFraction = br.Ceilings[lowest].FerryFraction
	}
	return br
}

func diskBaseline(r diskResult, payload int) DiskBaseline {
	d := DiskBaseline{Batch: r.Batch, PayloadsPerSec: r.perSecond(), SyncsPerSec: rate(r.Syncs, r.Elapsed)}
	dr := diskReport(r.IO, r.Payloads, int64(payload), -1)
	d.BytesPerPayloadByte, d.NotMeasured = dr.BytesPerPayloadByte, dr.NotMeasured
	return d
}

// ok reports whether the report shows no loss, no reordering and no
// problem.
func (r *Report) ok() bool {
	phases := []*PhaseReport{r.Ferry}
	if r.Baseline != nil {
		phases = append(phases, r.Baseline.BrokerAlone, r.Baseline.Bridge)
	}
	for _, p := range phases {
		if p != nil && (p.Lost > 0 || p.OutOfOrder > 0 || p.SplitDevices > 0 || len(p.Problems) > 0) {
			return false
		}
	}
	return r.Idle == nil || len(r.Idle.Problems) == 0
}

// writeJSON writes the report as one indented JSON object.
func (r *Report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ms converts to float milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
