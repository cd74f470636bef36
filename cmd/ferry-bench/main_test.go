package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// TestMain lets the test binary act as the bridge child, as main does.
func TestMain(m *testing.M) {
	if isChild, code := childMain(); isChild {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestRun runs the tool for two seconds at a low rate and checks that the
// report adds up: everything sent arrived, once, in order, and ferry's
// CPU, memory and disk figures were measured. With Mosquitto it runs the
// baselines too (mochi stalls under flat-out QoS 1 load).
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs ferry")
	}
	_, noMosquitto := testenv.FindMosquitto()
	withMosquitto := noMosquitto == nil && os.Getenv(testenv.EnvBroker) != testenv.KindMochi
	if !withMosquitto && os.Getenv(testenv.EnvRequireMosquitto) == "1" {
		t.Fatalf("%s=1 but Mosquitto is not available: %v", testenv.EnvRequireMosquitto, noMosquitto)
	}
	// sync: always, so that ferry writes and the disk figure is a real
	// one (with the default, delayed, a healthy Kafka leaves it at 0).
	args := []string{"-rate", "200", "-devices", "5", "-payload", "200", "-duration", "2s", "-json", "-q", "-dir", t.TempDir(), "-set", "buffer.sync=always"}
	if withMosquitto {
		args = append(args, "-baseline", "-baseline-duration", "1s")
	} else {
		t.Log("no Mosquitto: the baselines are not run")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit code %d; stderr:\n%s\nstdout:\n%s", code, stderr.String(), stdout.String())
	}
	var rep Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, stdout.String())
	}
	t.Logf("broker: %s", rep.Setup.Broker)

	f := rep.Ferry
	if f == nil {
		t.Fatal("no ferry figures")
	}
	checkDelivery(t, f, 300)
	p := f.Process
	if p == nil {
		t.Fatal("no process figures for ferry")
	}
	if p.CPUSeconds <= 0 || p.CPUSecondsPer100k <= 0 || p.PeakRSSMB <= 0 || p.PID <= 0 {
		t.Errorf("ferry's process figures are not all above zero: %+v", *p)
	}
	if d := p.Disk; d.WriteBytes == nil && d.NotMeasured == "" {
		t.Error("disk writes neither measured nor explained")
	} else if d.WriteBytes != nil && (*d.WriteBytes <= 0 || d.BytesPerPayloadByte == nil) {
		t.Errorf("disk writes measured as %d with %v per payload byte", *d.WriteBytes, d.BytesPerPayloadByte)
	}
	if f.Latency.P50 <= 0 || f.Latency.P99 < f.Latency.P50 || f.Latency.Max < f.Latency.P99 {
		t.Errorf("latency p50 %.2f, p99 %.2f, max %.2f ms", f.Latency.P50, f.Latency.P99, f.Latency.Max)
	}
	if f.MsgsPerSec < 100 || f.MsgsPerSec > 250 {
		t.Errorf("msgs/s %.1f, want about 200", f.MsgsPerSec)
	}

	if !withMosquitto {
		return
	}
	b := rep.Baseline
	if b == nil {
		t.Fatal("-baseline but no baseline figures")
	}
	checkDelivery(t, b.BrokerAlone, 1)
	checkDelivery(t, b.Bridge, 1)
	if b.Bridge.Process == nil || b.Bridge.Process.CPUSeconds <= 0 {
		t.Errorf("no CPU figure for the bridge child: %+v", b.Bridge.Process)
	}
	for _, c := range b.Ceilings {
		if c.MsgsPerSec <= 0 || c.FerryFraction <= 0 {
			t.Errorf("ceiling %q: %.1f msgs/s, ferry at %.3f of it", c.Name, c.MsgsPerSec, c.FerryFraction)
		}
	}
	if b.Lowest == "" {
		t.Error("no lowest ceiling named")
	}
}

// checkDelivery checks that at least minSent messages went out and every
// one arrived once and in order.
func checkDelivery(t *testing.T, p *PhaseReport, minSent int64) {
	t.Helper()
	if p == nil {
		t.Fatal("phase missing")
	}
	if p.Sent < minSent || p.Acknowledged != p.Sent || p.Delivered != p.Sent {
		t.Errorf("%s: sent %d, acknowledged %d, delivered %d (want at least %d, all equal)", p.Name, p.Sent, p.Acknowledged, p.Delivered, minSent)
	}
	if p.Lost != 0 || p.Duplicates != 0 || p.OutOfOrder != 0 || p.Unparsed != 0 || p.SplitDevices != 0 || len(p.Problems) > 0 {
		t.Errorf("%s: lost %d, duplicates %d, out of order %d, unparsed %d, split %d, problems %q",
			p.Name, p.Lost, p.Duplicates, p.OutOfOrder, p.Unparsed, p.SplitDevices, p.Problems)
	}
}
