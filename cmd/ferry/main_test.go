package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// TestMain lets the test binary act as the ferry command, so the restart
// tests run ferry as a real child process that gets real signals.
func TestMain(m *testing.M) {
	if args := os.Getenv("FERRY_TEST_CHILD_ARGS"); args != "" {
		os.Exit(run(strings.Fields(args), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func TestVersion(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"version"}, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, errOut.String())
	}
	if !strings.HasPrefix(out.String(), "ferry ") {
		t.Fatalf("version output %q", out.String())
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"fly"}, {"run", "extra"}, {"check", "-c"}} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != exitUsage {
			t.Errorf("ferry %v: exit %d, want %d", args, code, exitUsage)
		}
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	kafka, err := testenv.StartKafka()
	if err != nil {
		t.Fatal(err)
	}
	cfg := testenv.FerryConfig(&testenv.Broker{Kind: testenv.KindMosquitto, Addr: "127.0.0.1:1883"}, kafka, "telemetry", filepath.Join(dir, "b.db"))
	kafka.Close() // only its address was needed
	cfg = strings.Replace(cfg, "  client_id: ferry-gw-test\n", "  client_id: ferry-gw-test\n  username: u\n  password: hunter2\n", 1)
	if err := os.WriteFile(good, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"check", "-c", good}, &out, &errOut); code != exitOK {
		t.Fatalf("check good config: exit %d, stderr:\n%s", code, errOut.String())
	}
	if strings.Contains(out.String(), "hunter2") || !strings.Contains(out.String(), "gw-test") {
		t.Fatalf("effective config leaks the password or lacks the gateway:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "# Effective routes, tried in this order") || !strings.Contains(out.String(), "#   1. ") {
		t.Fatalf("check prints no route table:\n%s", out.String())
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("gateway_id: x\nmqtt:\n  url: tcp://127.0.0.1:1883\n  subscriptons: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	if code := run([]string{"check", "-c", bad}, &out, &errOut); code != exitUsage {
		t.Fatalf("check bad config: exit %d, want %d", code, exitUsage)
	}
	if !strings.Contains(errOut.String(), "bad.yaml:4:3") {
		t.Fatalf("error does not point at bad.yaml:4:3:\n%s", errOut.String())
	}
}

// child is ferry running as a child process.
type child struct {
	cmd        *exec.Cmd
	subscribed chan struct{}
	exited     chan struct{}
	mu         sync.Mutex
	log        bytes.Buffer
}

func startFerry(t *testing.T, configPath string, env ...string) *child {
	t.Helper()
	return startFerryIn(t, nil, configPath, env...)
}

// startFerryIn starts ferry as startFerry does, its command line prefixed
// by wrapper (a sandbox, say).
func startFerryIn(t *testing.T, wrapper []string, configPath string, env ...string) *child {
	t.Helper()
	c := &child{subscribed: make(chan struct{}), exited: make(chan struct{})}
	var args []string
	if bin := os.Getenv("FERRY_TEST_BINARY"); bin != "" {
		// A ferry binary built for the boards, run under qemu-user with
		// FERRY_TEST_EXEC=qemu-aarch64-static, for example.
		args = []string{bin, "run", "-c", configPath}
		if emu := os.Getenv("FERRY_TEST_EXEC"); emu != "" {
			args = append([]string{emu}, args...)
		}
	} else {
		args = []string{os.Args[0], "-test.run=^$"}
		env = append([]string{"FERRY_TEST_CHILD_ARGS=run -c " + configPath}, env...)
	}
	args = append(slices.Clone(wrapper), args...)
	c.cmd = exec.Command(args[0], args[1:]...)
	c.cmd.Env = append(os.Environ(), env...)
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.exited)
		once := sync.Once{}
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.log.WriteString(line + "\n")
			c.mu.Unlock()
			if strings.Contains(line, "msg=subscribed") {
				once.Do(func() { close(c.subscribed) })
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		<-c.exited
		c.cmd.Wait()
		if t.Failed() {
			t.Logf("ferry log:\n%s", c.logText())
		}
	})
	return c
}

func (c *child) logText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.log.String()
}

func (c *child) waitSubscribed(t *testing.T) {
	t.Helper()
	select {
	case <-c.subscribed:
	case <-c.exited:
		t.Fatalf("ferry exited before subscribing:\n%s", c.logText())
	case <-time.After(20 * time.Second):
		t.Fatalf("ferry did not subscribe within 20s:\n%s", c.logText())
	}
}

// stop sends sig and waits for the process; it returns the exit code, or
// -1 if a signal ended it.
func (c *child) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	<-c.exited
	err := c.cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

func TestRestartAfterSIGTERM(t *testing.T) { runRestartModes(t, syscall.SIGTERM) }
func TestRestartAfterSIGKILL(t *testing.T) { runRestartModes(t, syscall.SIGKILL) }

// runRestartModes runs runRestart in both buffer.sync modes.
func runRestartModes(t *testing.T, sig syscall.Signal) {
	for _, mode := range []string{"delayed", "always"} {
		t.Run("sync="+mode, func(t *testing.T) { runRestart(t, sig, mode) })
	}
}

// runRestart streams 20 devices x 500 QoS 1 messages while ferry is stopped
// with sig mid-stream and started again: nothing the broker acknowledged to
// a sensor may be lost, and per device the first deliveries stay in order.
// sync is buffer.sync.
func runRestart(t *testing.T, sig syscall.Signal, sync string) {
	const devices, perDevice = 20, 500
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt v2.7.9 can lose a persistent session's acknowledged messages when its subscriber crashes")
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	dir := t.TempDir()
	configPath := filepath.Join(dir, "ferry.yaml")
	text := testenv.FerryConfig(broker, kafka, topic, filepath.Join(dir, "buffer.db"))
	text = strings.Replace(text, "buffer:\n", "buffer:\n  sync: "+sync+"\n", 1)
	if err := os.WriteFile(configPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}

	ferry := startFerry(t, configPath)
	ferry.waitSubscribed(t)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	collector, err := testenv.StartCollector(ctx, kafka.Brokers(), topic, kafka.ClientOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	defer collector.Close()
	sensors := testenv.StartSensors(ctx, testenv.SensorsConfig{
		BrokerURL: broker.URL(), Devices: devices, PerDevice: perDevice, QoS: 1,
		Interval: time.Millisecond, // spread the stream so the stop lands mid-way
	})

	deadline := time.Now().Add(60 * time.Second)
	for sensors.Sent() < devices*perDevice/3 {
		if time.Now().After(deadline) {
			t.Fatalf("sensors sent only %d messages in 60s", sensors.Sent())
		}
		time.Sleep(5 * time.Millisecond)
	}
	code := ferry.stop(t, sig)
	t.Logf("ferry stopped by %v at %d sent, %d in Kafka; exit code %d", sig, sensors.Sent(), collector.Count(), code)
	if sig == syscall.SIGTERM && code != exitOK {
		t.Fatalf("SIGTERM: exit code %d, want 0:\n%s", code, ferry.logText())
	}
	time.Sleep(500 * time.Millisecond) // sensors keep publishing; the broker queues for ferry's session

	ferry = startFerry(t, configPath)
	res, err := sensors.Wait()
	if err != nil {
		t.Fatalf("sensors: %v", err)
	}
	rep := collector.WaitFor(ctx, res)
	t.Logf("report: %s", rep)
	if rep.Sent != devices*perDevice {
		t.Errorf("sensors got %d acknowledgements, want %d", rep.Sent, devices*perDevice)
	}
	if !rep.OK() {
		t.Fatalf("not delivered intact after %v: %s\n%s", sig, rep, ferry.logText())
	}
	if code := ferry.stop(t, syscall.SIGTERM); code != exitOK {
		t.Fatalf("final SIGTERM: exit code %d:\n%s", code, ferry.logText())
	}
}

// TestNamedFilesChecked: a file the configuration names that cannot be read
// or holds the wrong thing fails ferry check and ferry run alike, with exit
// code 2 and the key's file:line:column, before ferry connects anywhere.
func TestNamedFilesChecked(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pw")
	notPEM := filepath.Join(dir, "ca.pem")
	for file, text := range map[string]string{empty: "\n", notPEM: "not a certificate\n"} {
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := "gateway_id: gw\nadmin: {listen: \"\"}\nmqtt:\n  url: tcp://127.0.0.1:1\n  subscriptions: [{filter: a/#}]\n%sbuffer:\n  path: " + filepath.Join(dir, "b.db") +
		"\nforward:\n  kafka:\n    brokers: [127.0.0.1:1]\n%s  routes: [{match: a/#, topic: t}]\n"
	for _, tc := range []struct {
		name, mqtt, kafka string
		want              string // after the file name
	}{
		{"missing mqtt password file", "  username: u\n  password_file: " + filepath.Join(dir, "nope") + "\n", "",
			":7:18: mqtt.password_file: cannot read " + filepath.Join(dir, "nope") + ": no such file or directory"},
		{"directory as sasl password file", "", "    sasl: {mechanism: SCRAM-SHA-512, username: u, password_file: " + dir + "}\n",
			":11:66: forward.kafka.sasl.password_file: " + dir + " is a directory, not a file"},
		{"empty password file", "  username: u\n  password_file: " + empty + "\n", "",
			":7:18: mqtt.password_file: " + empty + " is empty; it must hold the password"},
		{"CA file without a certificate", "", "    tls: {ca_file: " + notPEM + "}\n",
			":11:20: forward.kafka.tls.ca_file: " + notPEM + " holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ferry.yaml")
			if err := os.WriteFile(path, []byte(fmt.Sprintf(base, tc.mqtt, tc.kafka)), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, cmd := range []string{"check", "run"} {
				code, stderr := runChild(t, 20*time.Second, cmd, "-c", path)
				if code != exitUsage {
					t.Errorf("ferry %s: exit %d, want %d; stderr:\n%s", cmd, code, exitUsage, stderr)
				}
				if want := path + tc.want; !strings.Contains(stderr, want) {
					t.Errorf("ferry %s: stderr lacks %q:\n%s", cmd, want, stderr)
				}
			}
		})
	}
}

// runChild runs ferry with args as a child process (so that a ferry run
// that does not stop cannot hang the test) and returns its exit code and
// standard error; after timeout it is killed and the test fails.
func runChild(t *testing.T, timeout time.Duration, args ...string) (code int, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FERRY_TEST_CHILD_ARGS="+strings.Join(args, " "))
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("ferry %s still running after %v; stderr:\n%s", strings.Join(args, " "), timeout, errOut.String())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), errOut.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, errOut.String()
}

// TestCheckWarnsBufferSpace: a buffer bound larger than the file system
// that holds the buffer is a warning of ferry check, not a failure.
func TestCheckWarnsBufferSpace(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the file system is measured on Linux only")
	}
	if strconv.IntSize == 32 {
		t.Skip("max_bytes is at most 768MiB on a 32-bit system")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "ferry.yaml")
	doc := "gateway_id: gw\nmqtt:\n  url: tcp://127.0.0.1:1883\n  subscriptions: [{filter: a/#}]\nbuffer:\n  path: " + filepath.Join(dir, "b.db") +
		"\n  max_bytes: 8000000TiB\nforward:\n  kafka: {brokers: [127.0.0.1:9092]}\n  routes: [{match: a/#, topic: t}]\n"
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"check", "-c", path}, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut.String())
	}
	if want := "warning: " + path + ":7:14: buffer.max_bytes: the buffer may take "; !strings.Contains(errOut.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, errOut.String())
	}
}

// TestHugeConfig: ferry check and ferry run refuse a configuration file over
// 1MiB at once, with exit code 2 (a 50 MB file took 18 s and 835 MB).
func TestHugeConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "huge.yaml")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(50 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, cmd := range []string{"check", "run"} {
		var out, errOut bytes.Buffer
		if code := run([]string{cmd, "-c", path}, &out, &errOut); code != exitUsage {
			t.Errorf("ferry %s: exit %d, want %d", cmd, code, exitUsage)
		}
		if want := path + ": the file is 52428800 bytes; a configuration file may be at most 1MiB (1048576 bytes)"; !strings.Contains(errOut.String(), want) {
			t.Errorf("ferry %s: stderr lacks %q:\n%s", cmd, want, errOut.String())
		}
	}
}
