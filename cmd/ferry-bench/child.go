package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a process under measurement: ferry, or the bridge baseline. Its
// stdout and stderr go to a log file (and to echo, when set); ready is
// closed when a line satisfies the readiness test.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	ready   chan struct{}
	exited  chan struct{} // closed once the process has been waited for
	waitErr error

	mu   sync.Mutex
	tail []string // the last lines of output, for error messages
}

// startChild starts args[0] with args[1:] and extra environment, logging
// its output to logPath. isReady is called with each output line until it
// returns true.
func startChild(name string, args, env []string, logPath string, echo io.Writer, isReady func(line string) bool) (*child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s: create log: %w", name, err)
	}
	c := &child{name: name, logPath: logPath, ready: make(chan struct{}), exited: make(chan struct{})}
	c.cmd = exec.Command(args[0], args[1:]...)
	c.cmd.Env = append(os.Environ(), env...)
	dieWithParent(c.cmd)
	pr, pw, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("%s: pipe: %w", name, err)
	}
	c.cmd.Stdout, c.cmd.Stderr = pw, pw
	if err := c.cmd.Start(); err != nil {
		logf.Close()
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, args[0], err)
	}
	pw.Close()
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		defer logf.Close()
		var once sync.Once
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if echo != nil {
				fmt.Fprintf(echo, "[%s] %s\n", name, line)
			}
			c.mu.Lock()
			c.tail = append(c.tail, line)
			if len(c.tail) > 30 {
				c.tail = c.tail[len(c.tail)-30:]
			}
			c.mu.Unlock()
			if isReady(line) {
				once.Do(func() { close(c.ready) })
			}
		}
		_, _ = io.Copy(io.Discard, pr)
		pr.Close()
	}()
	go func() {
		err := c.cmd.Wait()
		<-scanned
		c.waitErr = err
		close(c.exited)
	}()
	return c, nil
}

// pid returns the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// waitReady waits until the child is ready, or poll reports ready (when
// not nil, it is called every 50 ms), or it exits, or timeout passes.
func (c *child) waitReady(ctx context.Context, timeout time.Duration, poll func() bool) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-c.ready:
			return nil
		case <-c.exited:
			return fmt.Errorf("%s exited before it was ready (%v); last output:\n%s", c.name, c.waitErr, c.lastLines())
		case <-t.C:
			return fmt.Errorf("%s not ready after %v; last output:\n%s", c.name, timeout, c.lastLines())
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if poll != nil && poll() {
				return nil
			}
		}
	}
}

// stop sends SIGTERM and waits up to timeout for the child to exit, then
// kills it. It returns the exit error of a child that did not stop
// cleanly. It is safe to call more than once.
func (c *child) stop(timeout time.Duration) error {
	select {
	case <-c.exited:
		return c.exitError()
	default:
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s: %w", c.name, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.exited:
		return c.exitError()
	case <-t.C:
	}
	_ = c.cmd.Process.Kill()
	<-c.exited
	return fmt.Errorf("stop %s: killed after no exit within %v of SIGTERM; last output:\n%s", c.name, timeout, c.lastLines())
}

func (c *child) exitError() error {
	if c.waitErr != nil {
		return fmt.Errorf("%s: %w; last output:\n%s", c.name, c.waitErr, c.lastLines())
	}
	return nil
}

// lastLines returns the child's last lines of output, indented.
func (c *child) lastLines() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.tail) == 0 {
		return "  (no output)"
	}
	return "  " + strings.Join(c.tail, "\n  ")
}
