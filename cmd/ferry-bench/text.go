package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

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
