package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// notifySocket is a systemd notify socket: what ferry sends with
// NOTIFY_SOCKET pointing at it, as systemd would receive it.
type notifySocket struct {
	path string
	conn *net.UnixConn
	done chan struct{}

	mu   sync.Mutex
	msgs []notifyMsg
}

type notifyMsg struct {
	at    time.Time
	state string
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifySocket{path: path, conn: conn, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, notifyMsg{time.Now(), string(buf[:k])})
			n.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-n.done })
	return n
}

// env is what systemd sets for a Type=notify service with WatchdogSec.
func (n *notifySocket) env(watchdog time.Duration) []string {
	env := []string{"NOTIFY_SOCKET=" + n.path}
	if watchdog > 0 {
		env = append(env, fmt.Sprintf("WATCHDOG_USEC=%d", watchdog.Microseconds()))
	}
	return env
}

// since returns the messages received at or after t.
func (n *notifySocket) since(t time.Time) []notifyMsg {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []notifyMsg
	for _, m := range n.msgs {
		if !m.at.Before(t) {
			out = append(out, m)
		}
	}
	return out
}

// waitFor waits until a message containing s arrived at or after from.
func (n *notifySocket) waitFor(t *testing.T, from time.Time, s string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, m := range n.since(from) {
			if strings.Contains(m.state, s) {
				return m.at
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q from ferry within %v; got %v", s, timeout, n.since(from))
	return time.Time{}
}

func countContaining(msgs []notifyMsg, s string) int {
	k := 0
	for _, m := range msgs {
		if strings.Contains(m.state, s) {
			k++
		}
	}
	return k
}

// freePort returns a loopback address no one listens on, for admin.listen.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// writeConfig writes a ferry configuration for broker and kafka with the
// buffer at bufferPath and the metrics endpoint on adminAddr.
func writeConfig(t *testing.T, broker *testenv.Broker, kafka *testenv.Kafka, topic, bufferPath, adminAddr string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ferry.yaml")
	cfg := testenv.FerryConfig(broker, kafka, topic, bufferPath) + fmt.Sprintf("admin:\n  listen: %q\n", adminAddr)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// setBufferKey adds a key to the buffer section of the config at path.
func setBufferKey(t *testing.T, path, key string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(data), "buffer:\n", "buffer:\n  "+key+"\n", 1)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSystemdNotifyMetricsStatus runs ferry as systemd would with
// Type=notify and WatchdogSec, delivers messages through it, and checks
// what systemd, Prometheus and `ferry status` learn, up to the clean stop.
func TestSystemdNotifyMetricsStatus(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt stalls under sustained QoS 1 publishing (it holds queued messages until the subscriber's next packet)")
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	addr := freeAddr(t)
	configPath := writeConfig(t, broker, kafka, topic, filepath.Join(t.TempDir(), "buffer.db"), addr)
	notify := newNotifySocket(t)
	start := time.Now()
	ferry := startFerry(t, configPath, notify.env(time.Second)...)
	ready := notify.waitFor(t, start, "READY=1", 60*time.Second)
	if got := notify.since(start); !strings.HasPrefix(got[0].state, "STATUS=starting") {
		t.Errorf("first notification %q, want STATUS=starting...", got[0].state)
	}
	ferry.waitSubscribed(t)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	collector, err := testenv.StartCollector(ctx, kafka.Brokers(), topic, kafka.ClientOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	defer collector.Close()
	res, err := testenv.RunSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 4, PerDevice: 100, QoS: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep := collector.WaitFor(ctx, res); !rep.OK() {
		t.Fatalf("not delivered intact: %s\n%s", rep, ferry.logText())
	}

	// The watchdog is pinged while all is well, every half interval.
	// The STATUS= line follows the flow, every statusInterval.
	notify.waitFor(t, ready, "WATCHDOG=1", 5*time.Second)
	notify.waitFor(t, time.Now(), "STATUS=received 400, buffered", statusInterval+10*time.Second)

	code, body := httpGet(t, "http://"+addr+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	for _, want := range []string{
		"ferry_mqtt_messages_received_total 400",
		"ferry_buffer_messages_committed_total 400",
		"ferry_kafka_records_forwarded_total 400",
		"ferry_mqtt_subscribed 1",
		// One connection, named by default after the broker's host and port.
		`ferry_mqtt_connection_connected{connection="` + broker.Addr + `"} 1`,
		`ferry_mqtt_connection_subscribed{connection="` + broker.Addr + `"} 1`,
		`ferry_mqtt_connection_messages_received_total{connection="` + broker.Addr + `"} 400`,
		`ferry_records_dropped_total{reason="unrouted"} 0`,
		"ferry_buffer_commit_latency_seconds_count 400",
		"ferry_kafka_produce_latency_seconds_count",
		"ferry_build_info{",
		"ferry_healthy 1",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != http.StatusOK || !strings.HasPrefix(body, "ready") {
		t.Errorf("/readyz: %d %q", code, body)
	}
	if code, body := httpGet(t, "http://"+addr+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %q", code, body)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"status", "-c", configPath}, &out, &errOut); code != exitOK {
		t.Fatalf("ferry status: exit %d: %s", code, errOut.String())
	}
	t.Logf("ferry status:\n%s", out.String())
	for _, want := range []string{"ready, healthy", "received 400, committed 400", "forwarded 400", "metrics        http://" + addr} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("ferry status lacks %q", want)
		}
	}

	stopAt := time.Now()
	if code := ferry.stop(t, syscall.SIGTERM); code != exitOK {
		t.Fatalf("SIGTERM: exit %d\n%s", code, ferry.logText())
	}
	notify.waitFor(t, stopAt, "STOPPING=1", time.Second)
	out.Reset()
	if code := run([]string{"status", "-c", configPath}, &out, &errOut); code != exitFailure {
		t.Errorf("ferry status of a stopped ferry: exit %d, want %d", code, exitFailure)
	}
}

// TestWatchdogStuckCommitter freezes the file system under the buffer (a
// real ext4 on a loop device, frozen with fsfreeze, like a hung SD card):
// the committer's fsync blocks, the watchdog pings stop and the status
// says why; after the thaw the pings resume and every message arrives.
// It needs root, loop devices, mkfs.ext4 and fsfreeze, and skips without.
func TestWatchdogStuckCommitter(t *testing.T) {
	mnt := frozenCapableMount(t)
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt stalls under sustained QoS 1 load")
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	configPath := writeConfig(t, broker, kafka, topic, filepath.Join(mnt, "buffer.db"), "")
	// sync: always, so that every message needs the disk: with the
	// default, delayed, Kafka's acknowledgements make the messages durable
	// and a frozen disk does not stop ferry while Kafka is up.
	setBufferKey(t, configPath, "sync: always")
	notify := newNotifySocket(t)
	const watchdog = time.Second
	start := time.Now()
	ferry := startFerry(t, configPath, notify.env(watchdog)...)
	thaw := func() { exec.Command("fsfreeze", "-u", mnt).Run() }
	t.Cleanup(thaw) // runs before the child is killed: a process in a frozen fs cannot die
	ready := notify.waitFor(t, start, "READY=1", 60*time.Second)
	notify.waitFor(t, ready, "WATCHDOG=1", 5*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	collector, err := testenv.StartCollector(ctx, kafka.Brokers(), topic, kafka.ClientOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	defer collector.Close()
	sensors := testenv.StartSensors(ctx, testenv.SensorsConfig{
		BrokerURL: broker.URL(), Devices: 4, PerDevice: 500, QoS: 1, Interval: 10 * time.Millisecond,
	})
	for collector.Count() < 50 {
		time.Sleep(10 * time.Millisecond)
	}
	if out, err := exec.Command("fsfreeze", "-f", mnt).CombinedOutput(); err != nil {
		t.Fatalf("fsfreeze -f: %v: %s", err, out)
	}
	frozen := time.Now()
	stuck := notify.waitFor(t, frozen, "STATUS=stuck: buffer committer stuck", 10*watchdog)
	time.Sleep(3 * watchdog)
	if n := countContaining(notify.since(stuck), "WATCHDOG=1"); n != 0 {
		t.Errorf("%d watchdog pings while the committer was stuck", n)
	}
	t.Logf("stuck reported %v after the freeze", stuck.Sub(frozen).Round(100*time.Millisecond))
	thawed := time.Now()
	thaw()
	notify.waitFor(t, thawed, "WATCHDOG=1", 5*watchdog)

	res, err := sensors.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if rep := collector.WaitFor(ctx, res); !rep.OK() {
		t.Fatalf("not delivered intact after the freeze: %s\n%s", rep, ferry.logText())
	}
	if !strings.Contains(ferry.logText(), "pipeline stuck") {
		t.Errorf("ferry did not log the stuck pipeline:\n%s", ferry.logText())
	}
	if code := ferry.stop(t, syscall.SIGTERM); code != exitOK {
		t.Fatalf("SIGTERM: exit %d", code)
	}
}

// frozenCapableMount mounts a fresh ext4 file system on a loop device and
// returns its mount point, or skips the test where that is impossible.
func frozenCapableMount(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a loop device")
	}
	for _, tool := range []string{"mkfs.ext4", "fsfreeze", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 128<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a loop device here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		exec.Command("fsfreeze", "-u", mnt).Run()
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// TestStopDuringKafkaOutage measures the slowest clean stop: Kafka cut off
// with records in flight, so the forwarder waits its shutdown timeout. The
// unit's TimeoutStopSec must cover it, or systemd kills ferry mid-stop.
func TestStopDuringKafkaOutage(t *testing.T) {
	broker := testenv.NewBroker(t)
	testenv.RequireMosquitto(t, broker, "mochi-mqtt stalls under sustained QoS 1 publishing (it holds queued messages until the subscriber's next packet)")
	kafka := testenv.NewKafka(t)
	if kafka.IsReal() {
		t.Skip("cuts kfake's network")
	}
	topic := testenv.NewTopic(t, kafka)
	configPath := writeConfig(t, broker, kafka, topic, filepath.Join(t.TempDir(), "buffer.db"), freeAddr(t))
	ferry := startFerry(t, configPath)
	ferry.waitSubscribed(t)
	kafka.SetReachable(false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := testenv.RunSensors(ctx, testenv.SensorsConfig{BrokerURL: broker.URL(), Devices: 4, PerDevice: 100, QoS: 1}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // let the forwarder take records in flight
	start := time.Now()
	if code := ferry.stop(t, syscall.SIGTERM); code != exitOK {
		t.Fatalf("SIGTERM: exit %d\n%s", code, ferry.logText())
	}
	took := time.Since(start)
	unit, err := os.ReadFile("../../packaging/ferry.service")
	if err != nil {
		t.Fatal(err)
	}
	var limit time.Duration
	for _, line := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(line, "TimeoutStopSec="); ok {
			n, err := time.ParseDuration(strings.TrimSpace(v) + "s")
			if err != nil {
				t.Fatalf("TimeoutStopSec=%s: %v", v, err)
			}
			limit = n
		}
	}
	t.Logf("clean stop during a Kafka outage took %v; TimeoutStopSec is %v", took.Round(10*time.Millisecond), limit)
	if took >= limit {
		t.Errorf("the clean stop took %v, more than the unit's TimeoutStopSec=%v", took, limit)
	}
}

// TestMetricsUnderProcSubsetPid runs ferry with /proc as the unit's
// ProcSubset=pid and ProtectProc=invisible leave it (a /proc mounted so in
// a private mount namespace made with unshare): every ferry_ metric is still served,
// /proc/self/io included. Needs root and unshare; skips without.
func TestMetricsUnderProcSubsetPid(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for unshare and mount")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare")
	}
	if out, err := exec.Command("unshare", "-m", "sh", "-c",
		"mount -t proc -o subset=pid,hidepid=invisible proc /proc && ! test -e /proc/stat").CombinedOutput(); err != nil {
		t.Skipf("cannot mount /proc with subset=pid here: %v: %s", err, out)
	}
	broker := testenv.NewBroker(t)
	kafka := testenv.NewKafka(t)
	topic := testenv.NewTopic(t, kafka)
	addr := freeAddr(t)
	configPath := writeConfig(t, broker, kafka, topic, filepath.Join(t.TempDir(), "buffer.db"), addr)
	// unshare and sh exec ferry: the signals the test sends reach it.
	sandbox := []string{"unshare", "-m", "sh", "-c",
		`mount -t proc -o subset=pid,hidepid=invisible proc /proc && exec "$@"`, "sandbox"}
	ferry := startFerryIn(t, sandbox, configPath)
	ferry.waitSubscribed(t)

	code, body := httpGet(t, "http://"+addr+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d\n%s\n%s", code, body, ferry.logText())
	}
	for _, want := range []string{"ferry_disk_written_bytes_total ", "ferry_buffer_oldest_record_age_seconds 0", "process_resident_memory_bytes ", "ferry_ready 1"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics under ProcSubset=pid lacks %q", want)
		}
	}
	if strings.Contains(body, "ferry_disk_written_bytes_total 0\n") {
		t.Error("ferry_disk_written_bytes_total is 0: /proc/self/io unread")
	}
	for _, line := range strings.Split(ferry.logText(), "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, "component=metrics") {
			t.Errorf("metrics warning: %s", line)
		}
	}
	if code := ferry.stop(t, syscall.SIGTERM); code != exitOK {
		t.Fatalf("SIGTERM: exit %d\n%s", code, ferry.logText())
	}
}
