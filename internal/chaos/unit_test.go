//go:build chaos

package chaos

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// unitPath is the systemd unit the package installs; the supervisor
// restarts ferry as it says.
const unitPath = "../../packaging/ferry.service"

// unit is what the supervisor takes from the [Service] section of
// ferry.service: when to restart, after how long, and the timeouts.
type unit struct {
	Restart      string        // Restart=: no, on-success, on-failure, on-abnormal, on-watchdog, on-abort, always
	RestartDelay time.Duration // RestartSec=
	PreventExit  []exitStatus  // RestartPreventExitStatus=
	ForceExit    []exitStatus  // RestartForceExitStatus=
	Watchdog     time.Duration // WatchdogSec=; 0: none
	StartTimeout time.Duration // TimeoutStartSec=
	StopTimeout  time.Duration // TimeoutStopSec=
}

// exitStatus is an exit code (signal 0) or a signal (code -1), as
// RestartPreventExitStatus= lists them.
type exitStatus struct {
	code   int
	signal syscall.Signal
}

func (e exitStatus) String() string {
	if e.signal != 0 {
		return "SIG" + strings.TrimPrefix(unix.SignalName(e.signal), "SIG")
	}
	return strconv.Itoa(e.code)
}

// readUnit parses the [Service] section of the unit file at path, with
// systemd's defaults for what it does not set.
func readUnit(path string) (unit, error) {
	u := unit{Restart: "no", RestartDelay: 100 * time.Millisecond, StartTimeout: 90 * time.Second, StopTimeout: 90 * time.Second}
	f, err := os.Open(path)
	if err != nil {
		return u, err
	}
	defer f.Close()
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			section = line
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok || section != "[Service]" {
			continue
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		var perr error
		switch key {
		case "Restart":
			u.Restart = val
		case "RestartSec":
			u.RestartDelay, perr = systemdDuration(val)
		case "WatchdogSec":
			u.Watchdog, perr = systemdDuration(val)
		case "TimeoutStartSec":
			u.StartTimeout, perr = systemdDuration(val)
		case "TimeoutStopSec":
			u.StopTimeout, perr = systemdDuration(val)
		case "TimeoutSec":
			u.StartTimeout, perr = systemdDuration(val)
			u.StopTimeout = u.StartTimeout
		case "RestartPreventExitStatus":
			var st []exitStatus
			st, perr = exitStatuses(val)
			u.PreventExit = appendOrReset(u.PreventExit, st, val)
		case "RestartForceExitStatus":
			var st []exitStatus
			st, perr = exitStatuses(val)
			u.ForceExit = appendOrReset(u.ForceExit, st, val)
		}
		if perr != nil {
			return u, fmt.Errorf("%s:%d: %s=%s: %w", path, n, key, val, perr)
		}
	}
	return u, sc.Err()
}

// appendOrReset is how systemd treats list settings: each line adds, an
// empty one clears.
func appendOrReset(list, add []exitStatus, val string) []exitStatus {
	if val == "" {
		return nil
	}
	return append(list, add...)
}

// systemdDuration parses a systemd time span: "5", "5s", "500ms", "1min
// 30s", "infinity" (returned as 0, no limit).
func systemdDuration(s string) (time.Duration, error) {
	if s == "infinity" {
		return 0, nil
	}
	var total time.Duration
	for _, f := range strings.Fields(s) {
		if _, err := strconv.ParseFloat(f, 64); err == nil {
			f += "s" // a bare number is seconds
		}
		f = strings.NewReplacer("min", "m", "sec", "s", "msec", "ms", "usec", "us").Replace(f)
		d, err := time.ParseDuration(f)
		if err != nil {
			return 0, err
		}
		total += d
	}
	return total, nil
}

// exitStatuses parses "2 SIGKILL 75".
func exitStatuses(s string) ([]exitStatus, error) {
	var out []exitStatus
	for _, f := range strings.Fields(s) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, exitStatus{code: n})
			continue
		}
		name := "SIG" + strings.TrimPrefix(f, "SIG")
		sig := unix.SignalNum(name)
		if sig == 0 {
			return nil, fmt.Errorf("neither an exit code nor a signal: %q", f)
		}
		out = append(out, exitStatus{code: -1, signal: sig})
	}
	return out, nil
}

// ending is how one ferry process ended, as systemd sees it.
type ending struct {
	code     int            // exit code; -1 if a signal ended it
	signal   syscall.Signal // the signal that ended it, or 0
	watchdog bool           // systemd (here: the supervisor) signalled it for a missed watchdog ping
	timeout  bool           // it was stopped because it did not become ready in TimeoutStartSec
}

func (e ending) String() string {
	s := strconv.Itoa(e.code)
	if e.signal != 0 {
		s = exitStatus{code: -1, signal: e.signal}.String()
	}
	switch {
	case e.watchdog:
		s += " (watchdog)"
	case e.timeout:
		s += " (start timeout)"
	}
	return s
}

// cleanSignal reports whether systemd counts death by sig as a clean exit.
func cleanSignal(sig syscall.Signal) bool {
	switch sig {
	case syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE:
		return true
	}
	return false
}

func matches(list []exitStatus, e ending) bool {
	for _, st := range list {
		if e.signal == 0 && st.signal == 0 && st.code == e.code ||
			e.signal != 0 && st.signal == e.signal {
			return true
		}
	}
	return false
}

// shallRestart is systemd's decision (service_shall_restart) after a
// process that nobody asked to stop ended with e: RestartPreventExitStatus=
// first, then RestartForceExitStatus=, then the Restart= setting. why says
// which rule decided.
func (u unit) shallRestart(e ending) (restart bool, why string) {
	if matches(u.PreventExit, e) {
		return false, fmt.Sprintf("exit %s is in RestartPreventExitStatus=", e)
	}
	if matches(u.ForceExit, e) {
		return true, fmt.Sprintf("exit %s is in RestartForceExitStatus=", e)
	}
	clean := !e.watchdog && !e.timeout && (e.signal == 0 && e.code == 0 || cleanSignal(e.signal))
	unclean := e.signal != 0 && !cleanSignal(e.signal)
	var r bool
	switch u.Restart {
	case "always":
		r = true
	case "on-success":
		r = clean
	case "on-failure":
		r = !clean
	case "on-abnormal":
		r = unclean || e.watchdog || e.timeout
	case "on-watchdog":
		r = e.watchdog
	case "on-abort":
		r = unclean && !e.watchdog
	}
	return r, fmt.Sprintf("Restart=%s, exit %s", u.Restart, e)
}

// TestUnitRestartPolicy checks the supervisor's reading of systemd's rules
// on the packaged unit and on made-up ones.
func TestUnitRestartPolicy(t *testing.T) {
	u, err := readUnit(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: Restart=%s RestartSec=%v RestartPreventExitStatus=%v WatchdogSec=%v TimeoutStartSec=%v TimeoutStopSec=%v",
		unitPath, u.Restart, u.RestartDelay, u.PreventExit, u.Watchdog, u.StartTimeout, u.StopTimeout)
	if u.Restart == "no" || u.RestartDelay <= 0 || u.Watchdog <= 0 {
		t.Errorf("the packaged unit does not restart ferry or has no watchdog: %+v", u)
	}

	onFailure := unit{Restart: "on-failure", PreventExit: []exitStatus{{code: 2}}}
	for _, tc := range []struct {
		u    unit
		e    ending
		want bool
	}{
		{onFailure, ending{code: 1}, true},
		{onFailure, ending{code: 0}, false},
		{onFailure, ending{code: 2}, false},
		{onFailure, ending{code: -1, signal: syscall.SIGKILL}, true},
		{onFailure, ending{code: -1, signal: syscall.SIGTERM}, false},
		{onFailure, ending{code: 2, watchdog: true}, false}, // a Go program exits 2 on the watchdog's SIGABRT
		{onFailure, ending{code: -1, signal: syscall.SIGABRT, watchdog: true}, true},
		{unit{Restart: "on-failure"}, ending{code: 2}, true},
		{unit{Restart: "on-abnormal"}, ending{code: 1}, false},
		{unit{Restart: "on-abnormal"}, ending{code: -1, signal: syscall.SIGKILL}, true},
		{unit{Restart: "always", PreventExit: []exitStatus{{code: -1, signal: syscall.SIGKILL}}}, ending{code: -1, signal: syscall.SIGKILL}, false},
		{unit{Restart: "no", ForceExit: []exitStatus{{code: 3}}}, ending{code: 3}, true},
	} {
		if got, why := tc.u.shallRestart(tc.e); got != tc.want {
			t.Errorf("Restart=%s prevent=%v force=%v, exit %v: restart %v (%s), want %v",
				tc.u.Restart, tc.u.PreventExit, tc.u.ForceExit, tc.e, got, why, tc.want)
		}
	}
	for in, want := range map[string]time.Duration{"5s": 5 * time.Second, "30": 30 * time.Second, "1min 30s": 90 * time.Second, "500ms": 500 * time.Millisecond} {
		if got, err := systemdDuration(in); err != nil || got != want {
			t.Errorf("systemdDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if st, err := exitStatuses("2 SIGKILL TERM"); err != nil || len(st) != 3 || st[1].signal != syscall.SIGKILL || st[2].signal != syscall.SIGTERM {
		t.Errorf("exitStatuses: %v, %v", st, err)
	}
}
