package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of the CPU times in /proc/PID/stat: USER_HZ, 100 on
// every Linux architecture ferry is built for.
const userHZ = 100

// procSample is what /proc says about one process at one moment.
type procSample struct {
	At  time.Time
	CPU time.Duration // user + system time of all its threads, not its children's
	RSS int64         // bytes resident now (VmRSS)
	HWM int64         // peak resident bytes since start (VmHWM)
	// Anon is RssAnon: the resident part of the heap, stacks and other
	// anonymous memory, without mapped files (the binary, bbolt's mmap
	// of the buffer) whose pages the kernel can drop and read again.
	Anon int64
	IO   ioCounters
}

// ioCounters are the fields of /proc/PID/io. Err says why they are
// missing: the file is unreadable (another user, hardened /proc) or the
// kernel has no task I/O accounting.
type ioCounters struct {
	WriteBytes     int64 // bytes the process caused to be sent to storage (page-cache pages it dirtied)
	CancelledBytes int64 // of those, not written after all (truncated, deleted before writeback)
	WChar          int64 // bytes passed to write(2) and friends: files and sockets
	Err            error
}

// sampleProc reads /proc/PID/{stat,status,io}. An error means the process
// is gone or /proc is unusable; an unreadable io file is not an error but
// recorded in IO.Err.
func sampleProc(pid int) (procSample, error) {
	s := procSample{At: time.Now()}
	cpu, err := readCPU(pid)
	if err != nil {
		return s, err
	}
	s.CPU = cpu
	if s.RSS, s.HWM, s.Anon, err = readMemory(pid); err != nil {
		return s, err
	}
	s.IO = readIO(pid)
	return s, nil
}

// readCPU returns utime+stime from /proc/PID/stat.
func readCPU(pid int) (time.Duration, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// count fields after the last ')'. utime and stime are fields 14 and
	// 15, the 12th and 13th after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse %s: no ')'", path)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("parse %s: %d fields after the name", path, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return time.Duration(utime+stime) * time.Second / userHZ, nil
}

// readMemory returns VmRSS, VmHWM and RssAnon from /proc/PID/status, in
// bytes.
func readMemory(pid int) (rss, hwm, anon int64, err error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("read %s: %w", path, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		var dst *int64
		switch key {
		case "VmRSS":
			dst = &rss
		case "VmHWM":
			dst = &hwm
		case "RssAnon":
			dst = &anon
		}
		if !ok || dst == nil {
			continue
		}
		f := strings.Fields(val) // "12345 kB"
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, 0, fmt.Errorf("parse %s: %s: %q", path, key, val)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("parse %s: %s: %w", path, key, err)
		}
		*dst = kb << 10
	}
	if hwm == 0 {
		return 0, 0, 0, fmt.Errorf("parse %s: no VmHWM (a kernel thread, or a zombie)", path)
	}
	return rss, hwm, anon, nil
}

// probeIOAccounting writes and syncs a small file in dir and reports
// whether this process's write_bytes counted it: if not, a write_bytes of
// 0 means nothing, whatever process it is read for.
func probeIOAccounting(dir string) error {
	before := readIO(os.Getpid())
	if before.Err != nil {
		return before.Err
	}
	f, err := os.CreateTemp(dir, "io-probe-")
	if err != nil {
		return fmt.Errorf("I/O accounting probe: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.Write(make([]byte, 64<<10)); err != nil {
		return fmt.Errorf("I/O accounting probe: %w", err)
	}
	if err := syncData(f); err != nil {
		return fmt.Errorf("I/O accounting probe: %w", err)
	}
	after := readIO(os.Getpid())
	if after.Err != nil {
		return after.Err
	}
	if after.WriteBytes <= before.WriteBytes {
		return fmt.Errorf("storage writes are not accounted here: a probe that wrote and synced 64 KiB in %s counted %d bytes in /proc/self/io write_bytes (file system %s)",
			dir, after.WriteBytes-before.WriteBytes, fsType(dir))
	}
	return nil
}

// readIO reads /proc/PID/io.
func readIO(pid int) ioCounters {
	path := fmt.Sprintf("/proc/%d/io", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		return ioCounters{Err: fmt.Errorf("read %s: %w", path, err)}
	}
	var c ioCounters
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(val), 10, 64)
		if err != nil {
			continue
		}
		switch key {
		case "write_bytes":
			c.WriteBytes = n
			found++
		case "cancelled_write_bytes":
			c.CancelledBytes = n
		case "wchar":
			c.WChar = n
		}
	}
	if found == 0 {
		c.Err = fmt.Errorf("%s has no write_bytes: the kernel does not account storage I/O per task", path)
	}
	return c
}

// hostCPU is the machine's CPU time from /proc/stat, all cores together.
type hostCPU struct {
	Busy, Total time.Duration
}

// readHostCPU reads the aggregate "cpu" line of /proc/stat. Busy is
// everything but idle and iowait.
func readHostCPU() (hostCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return hostCPU{}, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 6 || f[0] != "cpu" {
		return hostCPU{}, fmt.Errorf("parse /proc/stat: first line %q", line)
	}
	var h hostCPU
	for i, s := range f[1:] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return hostCPU{}, fmt.Errorf("parse /proc/stat: %w", err)
		}
		if i >= 8 { // guest times are already in user and nice
			break
		}
		d := time.Duration(n) * time.Second / userHZ
		h.Total += d
		if i != 3 && i != 4 { // idle, iowait
			h.Busy += d
		}
	}
	return h, nil
}

// childPID returns the pid of a child of this process whose command name
// is comm, or 0 if there is none.
func childPID(comm string) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	self := strconv.Itoa(os.Getpid())
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || end < open {
			continue
		}
		f := strings.Fields(string(b[end+1:])) // state, ppid, ...
		if string(b[open+1:end]) == comm && len(f) > 1 && f[1] == self {
			return pid
		}
	}
	return 0
}

// window is the difference between two samples of a process (and of the
// machine, and of the broker when it is a child process) over a
// measurement window.
type window struct {
	Elapsed   time.Duration
	CPU       time.Duration
	HWM       int64 // peak RSS at the end of the window (since the process started)
	RSS       int64 // at the end
	IO        ioCounters
	HostBusy  float64       // fraction of all cores busy, 0..1
	SelfCPU   time.Duration // this harness: publishers, kfake, consumer
	BrokerCPU time.Duration // -1 when the broker is not a process of its own
	brokerPID int
	brokerAt  time.Duration
	selfStart time.Duration
	hostStart hostCPU
	start     procSample
}

// beginWindow samples pid (0: none), the broker's process (0: none) and
// the machine.
func beginWindow(pid, brokerPID int) (*window, error) {
	w := &window{brokerPID: brokerPID, BrokerCPU: -1}
	if brokerPID > 0 {
		var err error
		if w.brokerAt, err = readCPU(brokerPID); err != nil {
			w.brokerPID = 0
		}
	}
	var err error
	if pid > 0 {
		if w.start, err = sampleProc(pid); err != nil {
			return nil, err
		}
	} else {
		w.start.At = time.Now()
	}
	w.hostStart, _ = readHostCPU()
	w.selfStart, _ = readCPU(os.Getpid())
	return w, nil
}

// end samples again and fills in the differences.
func (w *window) end(pid int) error {
	now := procSample{At: time.Now()}
	if pid > 0 {
		var err error
		if now, err = sampleProc(pid); err != nil {
			return err
		}
	}
	w.Elapsed = now.At.Sub(w.start.At)
	w.CPU = now.CPU - w.start.CPU
	w.HWM, w.RSS = now.HWM, now.RSS
	w.IO = now.IO
	if w.IO.Err == nil && w.start.IO.Err == nil {
		w.IO.WriteBytes -= w.start.IO.WriteBytes
		w.IO.CancelledBytes -= w.start.IO.CancelledBytes
		w.IO.WChar -= w.start.IO.WChar
	} else if w.IO.Err == nil {
		w.IO.Err = w.start.IO.Err
	}
	if h, err := readHostCPU(); err == nil && h.Total > w.hostStart.Total {
		w.HostBusy = float64(h.Busy-w.hostStart.Busy) / float64(h.Total-w.hostStart.Total)
	}
	if c, err := readCPU(os.Getpid()); err == nil {
		w.SelfCPU = c - w.selfStart
	}
	if w.brokerPID > 0 {
		if c, err := readCPU(w.brokerPID); err == nil {
			w.BrokerCPU = c - w.brokerAt
		}
	}
	return nil
}
