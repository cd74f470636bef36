package main

import (
	"os"
	"syscall"
	"testing"
	"time"
)

// TestProc checks the /proc readings against getrusage for this process.
func TestProc(t *testing.T) {
	// Burn CPU until getrusage counts 300 ms (however busy the machine).
	var ru syscall.Rusage
	for cpu := time.Duration(0); cpu < 300*time.Millisecond; cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()) {
		for x := 0; x < 1e6; x++ {
			_ = x * x
		}
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
	}
	s, err := sampleProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	// /proc counts in 10 ms ticks, sampled: allow a few of them.
	want := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if s.CPU < 250*time.Millisecond || s.CPU > want+50*time.Millisecond || s.CPU < want-50*time.Millisecond {
		t.Errorf("CPU from /proc %v, getrusage %v", s.CPU, want)
	}
	// getrusage's maxrss survives execve (it may be go test's), so VmRSS
	// and VmHWM are checked by touching 64 MB.
	big := make([]byte, 64<<20)
	for i := 0; i < len(big); i += 4096 {
		big[i] = 1
	}
	s2, err := sampleProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s2.RSS < 64<<20 || s2.HWM < s2.RSS || s2.HWM < s.HWM {
		t.Errorf("after touching 64 MB: VmHWM %d (was %d), VmRSS %d", s2.HWM, s.HWM, s2.RSS)
	}
	big[len(big)-1] = big[0] // keep it alive until here
	if s.IO.Err != nil {
		t.Logf("no I/O accounting here: %v", s.IO.Err)
	} else if err := probeIOAccounting(t.TempDir()); err != nil {
		t.Logf("write_bytes not usable here: %v", err)
	}
}
