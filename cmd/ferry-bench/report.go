package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
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

// phaseReport turns a phaseResult into its report. measuresDisk says
// whether the process is expected to write (so that write_bytes of 0 means
// "not accounted", not "nothing written").
func phaseReport(r *phaseResult, payload int, measuresDisk bool) *PhaseReport {
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
			Disk:          diskReport(w.IO, r.counts.Acked, int64(payload), r.fileGrowth, measuresDisk),
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
func diskReport(io ioCounters, messages, payload, fileGrowth int64, expectWrites bool) DiskReport {
	var r DiskReport
	if fileGrowth >= 0 {
		r.BufferFileGrowth = &fileGrowth
	}
	switch {
	case io.Err != nil:
		r.NotMeasured = io.Err.Error()
		return r
	case io.WriteBytes == 0 && expectWrites && messages > 0:
		r.NotMeasured = fmt.Sprintf("write_bytes stayed 0 while %d messages were made durable: storage writes are not accounted to the process here (tmpfs, or a kernel without task I/O accounting)", messages)
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
		Disk:            diskReport(w.IO, 0, 0, r.fileGrowth, false),
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
		BrokerAlone: phaseReport(b.Broker, payload, false),
		Bridge:      phaseReport(b.Bridge, payload, false),
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
	dr := diskReport(r.IO, r.Payloads, int64(payload), -1, true)
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

// writeText writes the report as a human table.
func (r *Report) writeText(w io.Writer) error {
	s := r.Setup
	var b strings.Builder
	fmt.Fprintf(&b, "ferry     %s\n", s.Ferry)
	if s.FerrySource != "" {
		fmt.Fprintf(&b, "          built from %s\n", s.FerrySource)
	}
	fmt.Fprintf(&b, "broker    %s; Kafka %s; all on 127.0.0.1\n", s.Broker, s.Kafka)
	if r.Ferry != nil || r.Baseline != nil {
		fmt.Fprintf(&b, "load      %d devices, QoS %d, %d-byte payloads, %s\n", s.Devices, s.QoS, s.PayloadBytes, loadText(s))
	}
	if s.Outage != "" {
		fmt.Fprintf(&b, "outage    %s\n", s.Outage)
	}
	cfg := "default (the README's example)"
	for _, e := range s.ConfigExtra {
		cfg += ", -config-extra " + strings.Join(strings.Fields(e), " ")
	}
	for _, e := range s.Set {
		cfg += ", -set " + e
	}
	fmt.Fprintf(&b, "config    %s\n", cfg)
	fmt.Fprintf(&b, "machine   %d CPUs; work dir %s (%s)\n\n", s.CPUs, s.WorkDir, s.FileSystem)

	if r.Idle != nil {
		writeIdle(&b, r.Idle)
	}
	var cols []*PhaseReport
	if r.Ferry != nil {
		cols = append(cols, r.Ferry)
	}
	if r.Baseline != nil {
		cols = append(cols, r.Baseline.Bridge, r.Baseline.BrokerAlone)
	}
	if len(cols) > 0 {
		writePhases(&b, cols)
	}
	if r.Baseline != nil {
		writeCeilings(&b, r.Baseline, r.Ferry, s.TargetRate)
	}
	switch {
	case r.Ferry == nil && r.OK:
		// idle: nothing to verify
	case r.OK:
		b.WriteString("\nOK: every acknowledged message arrived, in order per device\n")
	default:
		b.WriteString("\nNOT OK: see lost, out of order and problems above\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func loadText(s Setup) string {
	var what string
	if s.TargetRate > 0 {
		what = fmt.Sprintf("%s msg/s", num(s.TargetRate))
	} else {
		what = "flat out (each device publishes as soon as its previous message is acknowledged)"
	}
	switch {
	case s.Messages > 0:
		return fmt.Sprintf("%s, %d messages", what, s.Messages)
	case s.Duration > 0:
		return fmt.Sprintf("%s for %v", what, time.Duration(s.Duration*float64(time.Second)))
	}
	return what
}

// writePhases writes the phases side by side.
func writePhases(b *strings.Builder, cols []*PhaseReport) {
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	row := func(label string, f func(p *PhaseReport) string) {
		fmt.Fprintf(tw, "%-30s\t", label) // padded: AlignRight must not move it
		for _, p := range cols {
			fmt.Fprintf(tw, "%s\t", f(p))
		}
		fmt.Fprintln(tw)
	}
	proc := func(f func(p *ProcessReport) string) func(*PhaseReport) string {
		return func(p *PhaseReport) string {
			if p.Process == nil {
				return "n/a (in process)"
			}
			return f(p.Process)
		}
	}
	row("", func(p *PhaseReport) string { return phaseTitle(p.Name) })
	row("sent", func(p *PhaseReport) string { return count(p.Sent) })
	row("acknowledged by broker", func(p *PhaseReport) string { return count(p.Acknowledged) })
	row("delivered (unique)", func(p *PhaseReport) string { return count(p.Delivered) })
	row("lost", func(p *PhaseReport) string { return count(p.Lost) })
	row("duplicates", func(p *PhaseReport) string { return count(p.Duplicates) })
	row("out of order", func(p *PhaseReport) string { return count(p.OutOfOrder) })
	// A permit handed out in the last tick and not used before the end is
	// not worth a row; a real shortfall is.
	if anyPhase(cols, func(p *PhaseReport) bool { return p.BehindSchedule > p.Sent/100 }) {
		row("behind schedule (not sent)", func(p *PhaseReport) string { return count(p.BehindSchedule) })
	}
	if anyPhase(cols, func(p *PhaseReport) bool { return p.PublishErrors+p.Republished+p.DeliveredUnacknowledged > 0 }) {
		row("publish errors / republished", func(p *PhaseReport) string {
			return fmt.Sprintf("%d / %d", p.PublishErrors, p.Republished)
		})
		row("delivered unacknowledged", func(p *PhaseReport) string { return count(p.DeliveredUnacknowledged) })
	}
	row("msgs/s end to end", func(p *PhaseReport) string { return num(p.MsgsPerSec) })
	row("publish rate (acked/s)", func(p *PhaseReport) string { return num(p.PublishRate) })
	row("latency p50 / p99 / max ms", func(p *PhaseReport) string {
		return fmt.Sprintf("%.1f / %.1f / %.1f", p.Latency.P50, p.Latency.P99, p.Latency.Max)
	})
	row("CPU-s per 100k msgs", proc(func(p *ProcessReport) string { return fmt.Sprintf("%.2f", p.CPUSecondsPer100k) }))
	row("CPU (of one core)", proc(func(p *ProcessReport) string {
		return fmt.Sprintf("%.1f%% (%.2f s in %.1f s)", p.CPUPercent, p.CPUSeconds, p.WindowSeconds)
	}))
	row("peak RSS (VmHWM)", proc(func(p *ProcessReport) string { return fmt.Sprintf("%.1f MB", p.PeakRSSMB) }))
	row("  anonymous, no mapped files", proc(func(p *ProcessReport) string { return fmt.Sprintf("%.1f MB", p.PeakAnonRSSMB) }))
	row("written to disk", proc(func(p *ProcessReport) string { return diskText(p.Disk) }))
	row("  per payload byte", proc(func(p *ProcessReport) string {
		if p.Disk.BytesPerPayloadByte == nil {
			return "not measured"
		}
		return fmt.Sprintf("%.2f", *p.Disk.BytesPerPayloadByte)
	}))
	if anyPhase(cols, func(p *PhaseReport) bool { return p.Process != nil && p.Process.BufferCommits != nil }) {
		row("buffer commits (fsyncs)", func(p *PhaseReport) string {
			if p.Process == nil || p.Process.BufferCommits == nil {
				return "-"
			}
			s := count(int64(*p.Process.BufferCommits))
			if p.Process.MessagesPerCommit != nil {
				s += fmt.Sprintf(" (%.1f msgs each)", *p.Process.MessagesPerCommit)
			}
			return s
		})
	}
	row("peak backlog", func(p *PhaseReport) string { return count(p.PeakBacklog) })
	row("machine busy (all CPUs)", func(p *PhaseReport) string { return fmt.Sprintf("%.0f%%", p.Host.BusyPercent) })
	row("broker's CPU", func(p *PhaseReport) string {
		if p.Host.BrokerCPUSeconds == nil {
			return "in ferry-bench's"
		}
		return fmt.Sprintf("%.1f s", *p.Host.BrokerCPUSeconds)
	})
	row("ferry-bench's own CPU", func(p *PhaseReport) string { return fmt.Sprintf("%.1f s", p.Host.HarnessCPUSeconds) })
	_ = tw.Flush()

	b.WriteString("\nlatency: from the send time in the payload to the moment the consumer's fetch\n" +
		"  returned the record (it includes that fetch's round trip; for the broker alone,\n" +
		"  to the subscriber's receipt). CPU and disk: the process's own, from the first\n" +
		"  publish to the last arrival (/proc/PID/stat, /proc/PID/io write_bytes: the\n" +
		"  page-cache pages it dirtied; the file system's journal is not charged to it).\n" +
		"  Peak RSS counts the mapped files' pages it touched (its own binary, and the\n" +
		"  buffer file bbolt maps), which the kernel can drop and read again; the\n" +
		"  anonymous peak (heap, stacks; sampled every 100 ms) leaves them out.\n")
	for _, p := range cols {
		if p.Process != nil && p.Process.Disk.NotMeasured != "" {
			fmt.Fprintf(b, "%s: disk writes not measured: %s\n", p.Name, p.Process.Disk.NotMeasured)
			if g := p.Process.Disk.BufferFileGrowth; g != nil {
				fmt.Fprintf(b, "  fallback, NOT bytes written: the buffer file grew by %s\n", bytesText(*g))
			}
		}
		if o := p.Outage; o != nil {
			fmt.Fprintf(b, "%s: Kafka cut off at %.1fs for %.1fs; backlog then %s", p.Name, o.AtSeconds, o.Seconds, count(o.Backlog))
			if o.DrainSeconds != nil {
				fmt.Fprintf(b, ";\n  it was all in Kafka %.1fs later (%s msg/s arrived meanwhile)", *o.DrainSeconds, num(*o.DrainMsgsPerSec))
				if o.FirstArrivalSeconds != nil {
					fmt.Fprintf(b, "; the first record arrived after %.1fs,\n  then %s msg/s", *o.FirstArrivalSeconds, num(*o.DrainOnlyMsgsPerSec))
				}
			} else {
				b.WriteString("; it never drained")
			}
			b.WriteString("\n")
		}
		for _, pr := range p.Problems {
			fmt.Fprintf(b, "%s: PROBLEM: %s\n", p.Name, pr)
		}
		if len(p.LostSample) > 0 {
			fmt.Fprintf(b, "%s: lost, for example: %s\n", p.Name, strings.Join(p.LostSample, " "))
		}
	}
}

func phaseTitle(name string) string {
	switch name {
	case "bridge":
		return "bridge (no disk)"
	}
	return name
}

// writeCeilings writes the baselines' throughput and ferry's fraction of
// each.
func writeCeilings(b *strings.Builder, br *BaselineReport, ferry *PhaseReport, targetRate float64) {
	b.WriteString("\nceilings, flat out, same run\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "  %-56s\tmsgs/s\tferry / ceiling\t\n", "")
	for _, c := range br.Ceilings {
		frac := "-"
		if ferry != nil && c.MsgsPerSec > 0 {
			frac = fraction(c.FerryFraction)
		}
		fmt.Fprintf(tw, "  %-56s\t%s\t%s\t\n", c.Name, num(c.MsgsPerSec), frac)
	}
	_ = tw.Flush()
	d1 := br.DiskSingle
	fmt.Fprintf(b, "  (disk, 1 payload per fdatasync: %s/s", num(d1.PayloadsPerSec))
	if d1.BytesPerPayloadByte != nil {
		fmt.Fprintf(b, ", %.1f bytes written per payload byte", *d1.BytesPerPayloadByte)
	}
	if br.Disk.BytesPerPayloadByte != nil {
		fmt.Fprintf(b, "; batched: %.2f", *br.Disk.BytesPerPayloadByte)
	}
	b.WriteString(")\n")
	if ferry != nil && br.Lowest != "" {
		fmt.Fprintf(b, "ferry's %s msgs/s is %s of the lowest ceiling, %s\n", num(ferry.MsgsPerSec), fraction(br.FerryFraction), br.Lowest)
		if br.FerryFraction > 1 {
			b.WriteString("  (above 1: that baseline is no ceiling on this machine; the broker, kfake, the\n" +
				"  publishers and the consumer share its CPUs with the system measured, see machine busy)\n")
		}
	}
	if ferry != nil && targetRate > 0 {
		b.WriteString("  (ferry ran at a set rate: the fractions say how much of each ceiling that rate uses)\n")
	}
}

// writeIdle writes the idle measurement.
func writeIdle(b *strings.Builder, r *IdleReport) {
	fmt.Fprintf(b, "idle, no messages, %.0f s\n", r.Seconds)
	fmt.Fprintf(b, "  ferry CPU          %.3f s: %.3f%% of one core, %.1f CPU-s per hour\n", r.CPUSeconds, r.CPUPercent, r.CPUSecondsPerHour)
	fmt.Fprintf(b, "  written to disk    %s", diskText(r.Disk))
	if r.WriteBytesPerHour != nil {
		fmt.Fprintf(b, " (%s per hour)", bytesText(int64(*r.WriteBytesPerHour)))
	}
	b.WriteString("\n")
	if r.Disk.NotMeasured != "" {
		fmt.Fprintf(b, "    not measured: %s\n", r.Disk.NotMeasured)
		if g := r.Disk.BufferFileGrowth; g != nil {
			fmt.Fprintf(b, "    fallback, NOT bytes written: the buffer file grew by %s\n", bytesText(*g))
		}
	}
	if r.BufferCommits != nil {
		fmt.Fprintf(b, "  buffer commits     %.0f\n", *r.BufferCommits)
	}
	fmt.Fprintf(b, "  RSS                %.1f MB (peak %.1f MB; anonymous peak %.1f MB)\n", r.RSSMB, r.PeakRSSMB, r.PeakAnonRSSMB)
	fmt.Fprintf(b, "  machine busy       %.0f%% of all CPUs (everything on it)\n", r.HostBusyPercent)
	for _, p := range r.Problems {
		fmt.Fprintf(b, "  PROBLEM: %s\n", p)
	}
}

func diskText(d DiskReport) string {
	if d.WriteBytes == nil {
		return "not measured"
	}
	return bytesText(*d.WriteBytes)
}

func anyPhase(ps []*PhaseReport, f func(*PhaseReport) bool) bool {
	for _, p := range ps {
		if f(p) {
			return true
		}
	}
	return false
}

// ms converts to float milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// count formats n with thousands separators.
func count(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// num formats a rate: thousands separators above 100, one decimal below.
func num(f float64) string {
	if f >= 100 {
		return count(int64(f + 0.5))
	}
	return fmt.Sprintf("%.1f", f)
}

// fraction formats a ratio with two decimals, three below 0.1.
func fraction(f float64) string {
	if f < 0.1 {
		return fmt.Sprintf("%.3f", f)
	}
	return fmt.Sprintf("%.2f", f)
}

// bytesText formats a byte count.
func bytesText(n int64) string {
	switch {
	case n >= 10e9:
		return fmt.Sprintf("%.1f GB", float64(n)/1e9)
	case n >= 10e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 10e3:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}
