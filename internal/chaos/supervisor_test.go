//go:build chaos

package chaos

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Why a process ended, as far as the supervisor knows: a cause it set
// before it signalled the process. A process that ended with no cause
// exited on its own.
const (
	causeOwn          = ""
	causeChaosKill    = "killed by the test"
	causeStop         = "stopped (systemctl stop/restart)"
	causeWatchdog     = "watchdog"
	causeStartTimeout = "start timeout"
)

// proc is one ferry process.
type proc struct {
	n       int // 1 for the first process the supervisor started
	cmd     *exec.Cmd
	pid     int
	started time.Time
	ready   chan struct{} // closed on READY=1
	exited  chan struct{} // closed once the process has been waited for

	mu       sync.Mutex
	isReady  bool
	lastPing time.Time
	status   string // the last STATUS= line
	cause    string
	end      ending
	ended    time.Time
}

// signalWith sends sig to p and records cause as the reason it ends, if
// p runs and nobody signalled it yet; it reports whether it did.
func (p *proc) signalWith(cause string, sig syscall.Signal) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cause != causeOwn {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
	}
	p.cause = cause
	_ = p.cmd.Process.Signal(sig)
	return true
}

// run is the record of a process that ended.
type run struct {
	n          int
	pid        int
	lived      time.Duration
	wasReady   bool
	cause      string
	end        ending
	restarted  bool   // the supervisor started another after it
	notRestart string // why systemd would not restart it (a process that ended on its own)
	lastStatus string
}

// supervisor runs ferry as systemd runs a Type=notify service with the
// unit's Restart=, RestartSec=, RestartPreventExitStatus=, WatchdogSec=,
// TimeoutStartSec= and TimeoutStopSec=: it gives ferry a notify socket
// and WATCHDOG_USEC, waits for READY=1, sends the watchdog signal (SIGABRT)
// when the pings stop for Watchdog, and when a process ends without
// having been asked to, restarts it after RestartDelay if systemd would.
type supervisor struct {
	unit         unit
	restartDelay time.Duration // the unit's, or shorter in the short suite
	argv         []string
	env          []string
	logPath      string
	notify       *notifySocket

	mu      sync.Mutex
	changed chan struct{} // closed and replaced at every change of state
	cur     *proc
	starts  int
	runs    []run
	gaveUp  string        // why the last process was not restarted
	stopReq chan struct{} // closed to stop the loop that runs
	loop    chan struct{} // closed when that loop returns; nil if none ran
}

// newSupervisor prepares a supervisor for ferry's argv, logging its output
// to logPath. Nothing runs until start.
func newSupervisor(t *testing.T, u unit, restartDelay time.Duration, argv, env []string, logPath string) *supervisor {
	s := &supervisor{unit: u, restartDelay: restartDelay, argv: argv, env: env, logPath: logPath, changed: make(chan struct{})}
	s.notify = newNotifySocket(t, s.onNotify)
	t.Cleanup(s.shutdown)
	return s
}

// changedLocked wakes whoever waits for a change of state.
func (s *supervisor) changedLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// start is systemctl start: it runs ferry, and keeps it running as the unit
// says, until stop.
func (s *supervisor) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loop != nil {
		select {
		case <-s.loop:
		default:
			return // running
		}
	}
	s.gaveUp = ""
	stop, done := make(chan struct{}), make(chan struct{})
	s.stopReq, s.loop = stop, done
	go s.run(stop, done)
}

// stop is systemctl stop: SIGTERM, SIGKILL after StopTimeout, no
// restart. It returns how the process ended, or false if none ran.
func (s *supervisor) stop() (ending, bool) {
	s.mu.Lock()
	stop, done := s.stopReq, s.loop
	s.mu.Unlock()
	if done == nil {
		return ending{}, false
	}
	select {
	case <-stop:
	default:
		close(stop)
	}
	<-done
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.runs) == 0 || s.runs[len(s.runs)-1].cause != causeStop {
		return ending{}, false
	}
	return s.runs[len(s.runs)-1].end, true
}

// restart is systemctl restart: stop, then start at once.
func (s *supervisor) restart() (ending, bool) {
	e, ok := s.stop()
	s.start()
	return e, ok
}

// shutdown ends everything at the end of the test: SIGKILL, no waiting.
func (s *supervisor) shutdown() {
	s.mu.Lock()
	stop, done, cur := s.stopReq, s.loop, s.cur
	s.mu.Unlock()
	if done == nil {
		return
	}
	if cur != nil {
		cur.signalWith(causeStop, syscall.SIGKILL)
	}
	select {
	case <-stop:
	default:
		close(stop)
	}
	<-done
}

// run starts ferry and restarts it as systemd would, until stop is closed
// or systemd would give up.
func (s *supervisor) run(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		p, err := s.spawn()
		if err != nil {
			s.mu.Lock()
			s.gaveUp = err.Error()
			s.changedLocked()
			s.mu.Unlock()
			return
		}
		s.watch(p, stop)
		stopped := false
		select {
		case <-stop: // systemctl stop: no restart, whatever the exit
			stopped = true
		default:
		}
		restart, why := false, ""
		if !stopped {
			// Ended on its own, by the watchdog, or by a kill -9
			// from outside: systemd's rules decide.
			restart, why = s.unit.shallRestart(p.end)
		}
		p.mu.Lock()
		r := run{n: p.n, pid: p.pid, lived: p.ended.Sub(p.started), wasReady: p.isReady, cause: p.cause, end: p.end,
			restarted: restart && !stopped, lastStatus: p.status}
		p.mu.Unlock()
		s.mu.Lock()
		s.cur = nil
		if !restart && !stopped {
			r.notRestart = why
			s.gaveUp = why
		}
		s.runs = append(s.runs, r)
		s.changedLocked()
		s.mu.Unlock()
		if stopped || !restart {
			return
		}
		select {
		case <-stop:
			return
		case <-time.After(s.restartDelay):
		}
	}
}

// spawn starts one ferry process.
func (s *supervisor) spawn() (*proc, error) {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	s.mu.Lock()
	s.starts++
	n := s.starts
	s.mu.Unlock()
	fmt.Fprintf(logf, "=== ferry process #%d starting at %s\n", n, time.Now().Format("15:04:05.000"))
	cmd := exec.Command(s.argv[0], s.argv[1:]...)
	cmd.Env = append(slices.Clone(os.Environ()), s.env...)
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+s.notify.path)
	if s.unit.Watchdog > 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("WATCHDOG_USEC=%d", s.unit.Watchdog.Microseconds()))
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Should the test binary die, ferry dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start ferry: %w", err)
	}
	p := &proc{n: n, cmd: cmd, pid: cmd.Process.Pid, started: time.Now(), ready: make(chan struct{}), exited: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.ended = time.Now()
		p.end = ending{code: cmd.ProcessState.ExitCode()}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			p.end.signal = ws.Signal()
		}
		if p.end.code < 0 && p.end.signal == 0 {
			p.end.code = 255 // not expected: Wait failed
			p.status += fmt.Sprintf(" (wait: %v)", err)
		}
		p.mu.Unlock()
		close(p.exited)
	}()
	s.mu.Lock()
	s.cur = p
	s.changedLocked()
	s.mu.Unlock()
	return p, nil
}

// watch waits for p to end, playing systemd's timers meanwhile, and
// stopping it when stop is closed.
func (s *supervisor) watch(p *proc, stop <-chan struct{}) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var killers sync.WaitGroup
	defer killers.Wait()
	defer func() {
		p.mu.Lock()
		p.end.watchdog = p.cause == causeWatchdog
		p.end.timeout = p.cause == causeStartTimeout
		p.mu.Unlock()
	}()
	for {
		select {
		case <-p.exited:
			return
		case <-stop:
			if p.signalWith(causeStop, syscall.SIGTERM) {
				s.killAfterTimeout(p)
			}
			<-p.exited
			return
		case <-tick.C:
			p.mu.Lock()
			ready, last := p.isReady, p.lastPing
			p.mu.Unlock()
			switch {
			case !ready && s.unit.StartTimeout > 0 && time.Since(p.started) > s.unit.StartTimeout:
				if p.signalWith(causeStartTimeout, syscall.SIGTERM) {
					killers.Go(func() { s.killAfterTimeout(p) })
				}
			case ready && s.unit.Watchdog > 0 && time.Since(last) > s.unit.Watchdog:
				// WatchdogSignal= defaults to SIGABRT; then
				// TimeoutAbortSec (StopTimeout) before SIGKILL.
				if p.signalWith(causeWatchdog, syscall.SIGABRT) {
					killers.Go(func() { s.killAfterTimeout(p) })
				}
			}
		}
	}
}

// killAfterTimeout sends SIGKILL to p if it has not ended TimeoutStopSec
// after it was signalled, and returns once it ended.
func (s *supervisor) killAfterTimeout(p *proc) {
	t := time.NewTimer(s.unit.StopTimeout)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// onNotify handles one notify message from the process with pid.
func (s *supervisor) onNotify(pid int, msg string) {
	s.mu.Lock()
	p := s.cur
	s.mu.Unlock()
	if p == nil || p.pid != pid {
		return // NotifyAccess=main: only the main process is heard
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, line := range strings.Split(msg, "\n") {
		switch {
		case line == "READY=1":
			if !p.isReady {
				p.isReady = true
				p.lastPing = time.Now()
				close(p.ready)
			}
		case line == "WATCHDOG=1":
			p.lastPing = time.Now()
		case strings.HasPrefix(line, "STATUS="):
			p.status = strings.TrimPrefix(line, "STATUS=")
		}
	}
}

// waitRunning waits up to timeout for a process to run, and returns it,
// or nil if none started (or the supervisor gave up).
func (s *supervisor) waitRunning(timeout time.Duration) *proc { return s.waitNext(nil, timeout) }

// waitNext waits up to timeout for a process other than prev to run, and
// returns it, or nil if none started (or the supervisor gave up).
func (s *supervisor) waitNext(prev *proc, timeout time.Duration) *proc {
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		p, changed, loop := s.cur, s.changed, s.loop
		s.mu.Unlock()
		if p != nil && p != prev {
			return p
		}
		var ended <-chan struct{} // nil: never ready
		if loop != nil {
			if p == nil && isClosed(loop) {
				return nil
			}
			ended = loop
		}
		select {
		case <-changed:
		case <-ended:
		case <-deadline:
			return nil
		}
	}
}

// waitReady waits up to timeout for a process that said READY=1 and
// still runs.
func (s *supervisor) waitReady(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		p := s.waitRunning(time.Until(deadline))
		if p == nil {
			return false
		}
		select {
		case <-p.ready:
			select {
			case <-p.exited:
			default:
				return true
			}
		case <-p.exited:
		case <-time.After(time.Until(deadline)):
			return false
		}
	}
}

// kill sends SIGKILL to p, as the chaos test does; false if p had already
// ended or was being stopped.
func (s *supervisor) kill(p *proc) bool { return p.signalWith(causeChaosKill, syscall.SIGKILL) }

// history returns the processes that ended, the one running (nil if none)
// and why the supervisor gave up, if it did.
func (s *supervisor) history() ([]run, *proc, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.runs), s.cur, s.gaveUp
}

// notifySocket is the socket systemd hands a Type=notify service in
// NOTIFY_SOCKET. It receives the sender's pid with each message
// (SO_PASSCRED), as systemd does to apply NotifyAccess=main.
type notifySocket struct {
	path string
	conn *net.UnixConn
	done chan struct{}
}

func newNotifySocket(t *testing.T, handle func(pid int, msg string)) *notifySocket {
	t.Helper()
	// A socket path must fit in 108 bytes; t.TempDir() can be longer.
	dir, err := os.MkdirTemp("", "ferry-chaos-notify")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) }); err != nil || serr != nil {
		t.Fatalf("SO_PASSCRED on the notify socket: %v %v", err, serr)
	}
	n := &notifySocket{path: path, conn: conn, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		buf, oob := make([]byte, 4096), make([]byte, 1024)
		for {
			k, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			pid := 0
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for i := range msgs {
					if cred, err := unix.ParseUnixCredentials(&msgs[i]); err == nil {
						pid = int(cred.Pid)
					}
				}
			}
			handle(pid, string(buf[:k]))
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-n.done
		os.RemoveAll(dir)
	})
	return n
}
