package forward

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferry-edge/ferry/buffer"
)

// statusUntil reads the status records of c from the start and returns
// the first that ok accepts.
func statusUntil(t *testing.T, c *kfake.Cluster, what string, ok func(Status) bool) Status {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics("ferry.status"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var last []byte
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("no status record with %s; the last one: %s", what, last)
		}
		for _, r := range fs.Records() {
			var st Status
			if err := json.Unmarshal(r.Value, &st); err != nil {
				t.Fatalf("status record %s: %v", r.Value, err)
			}
			if last = r.Value; ok(st) {
				t.Logf("status record with %s: %s", what, r.Value)
				return st
			}
		}
	}
}

// holdProduce makes c answer no produce request with a record holding
// mark until the returned release is called (the test's end calls it
// too). (Requests may name topics by id only: the mark is in the records.)
func holdProduce(t *testing.T, c *kfake.Cluster, mark []byte) (release func()) {
	held := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(held) }) }
	t.Cleanup(release)
	c.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		for _, rt := range kreq.(*kmsg.ProduceRequest).Topics {
			for _, rp := range rt.Partitions {
				if bytes.Contains(rp.Records, mark) {
					c.SleepControl(func() { <-held })
					return nil, nil, false
				}
			}
		}
		return nil, nil, false
	})
	return release
}

// The status record tells ferry's version and uptime, the age of the
// oldest record waiting, drops and dead letters by reason, and the state
// of the MQTT connections and of Kafka; a change of state sends one
// within seconds, without waiting for the interval.
func TestStatusRecordTellsVersionBacklogAndConnections(t *testing.T) {
	c := newCluster(t, "t", "ferry.status")
	b := newBuffer(t)
	received := time.Now().Add(-90 * time.Second)
	if _, err := b.AppendWait(t.Context(), &buffer.Record{Topic: "s/drop", Payload: []byte("x"), ReceivedAt: received}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.AppendWait(t.Context(), &buffer.Record{Topic: "s/big", Payload: make([]byte, 2000), ReceivedAt: received}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := b.AppendWait(t.Context(), &buffer.Record{Topic: "s/a", Payload: []byte("held 21.5"), ReceivedAt: received}); err != nil {
			t.Fatal(err)
		}
	}
	release := holdProduce(t, c, []byte("held"))
	up := time.Date(2025, 3, 1, 12, 0, 0, 0, time.FixedZone("CET", 3600))
	mqtt := []MQTTConnection{
		{Name: "plant", URL: "mqtts://broker.plant:8883", State: ConnConnected, Subscribed: true, Since: up},
		{Name: "lab", URL: "tcp://10.0.0.7:1883", State: ConnRefused, Since: up, LastError: "the broker refused the connection: not authorized (reason code 0x87)"},
	}
	drop := route(t, "s/drop", "t", "")
	drop.Topic, drop.Drop = nil, true
	f, err := New(Config{Brokers: c.ListenAddrs(), GatewayID: "gw-7", Version: "1.4.0", Routes: []Route{drop, route(t, "s/+", "t", "")},
		MaxRecordBytes: 1000, StallTimeout: 300 * time.Millisecond,
		StatusTopic: "ferry.status", StatusInterval: time.Hour,
		Ingest: func() IngestStatus { return IngestStatus{Connections: mqtt} }}, b)
	if err != nil {
		t.Fatal(err)
	}
	if st := f.status(b.Stats()); st.Kafka.State != ConnConnecting || st.Kafka.LastError != "" {
		t.Fatalf("before Run: kafka %+v, want connecting", st.Kafka)
	}
	start := time.Now()
	stop := run(t, f)
	defer stop()

	st := statusUntil(t, c, "Kafka not acknowledging", func(st Status) bool { return st.Kafka.State == ConnNotAcknowledging })
	if st.Version != "1.4.0" || st.UptimeSeconds < 0 || st.UptimeSeconds > int64(time.Since(start)/time.Second)+1 {
		t.Errorf("version %q, uptime %ds after %v; want 1.4.0 and the time since New", st.Version, st.UptimeSeconds, time.Since(start))
	}
	if st.BufferedRecords != 3 || st.OldestRecordAgeSeconds < 90 || st.OldestRecordAgeSeconds > 90+int64(time.Since(start)/time.Second)+1 {
		t.Errorf("%d records buffered, the oldest %ds old; want 3 records from 90s ago", st.BufferedRecords, st.OldestRecordAgeSeconds)
	}
	if st.DeadLettered[ReasonTooLarge] != 1 || len(st.DeadLettered) != len(deadLetterReasons) {
		t.Errorf("dead lettered %v, want 1 %s and every other reason at 0", st.DeadLettered, ReasonTooLarge)
	}
	if st.Dropped[DropRoute] != 1 || st.Dropped[buffer.DropMaxBytes] != 0 {
		t.Errorf("dropped %v, want 1 by a drop route and the buffer's reasons at 0", st.Dropped)
	}
	if len(st.MQTT) != 2 || st.MQTT[0] != (MQTTConnection{Name: "plant", URL: "mqtts://broker.plant:8883", State: ConnConnected, Subscribed: true, Since: up.UTC()}) ||
		st.MQTT[1].State != ConnRefused || st.MQTT[1].LastError != mqtt[1].LastError || !st.MQTT[1].Since.Equal(up) {
		t.Errorf("mqtt %+v, want the connections Ingest told, times in UTC", st.MQTT)
	}
	if !strings.Contains(st.Kafka.LastError, "no acknowledgement from Kafka") || st.Kafka.Since.Before(start.Add(-time.Second)) || st.Kafka.Since.After(time.Now()) {
		t.Errorf("kafka %+v, want no acknowledgement since after the start", st.Kafka)
	}
	stalled := st.Kafka.Since

	release()
	st = statusUntil(t, c, "Kafka connected and the backlog delivered", func(st Status) bool {
		return st.Kafka.State == ConnConnected && st.BufferedRecords == 0
	})
	if st.OldestRecordAgeSeconds != 0 || st.Kafka.LastError != "" || !st.Kafka.Since.After(stalled) || st.Delivered != 3 {
		t.Errorf("after the backlog: oldest %ds, kafka %+v (stalled since %v), delivered %d; want 0, connected since after the stall, no error, 3",
			st.OldestRecordAgeSeconds, st.Kafka, stalled, st.Delivered)
	}
}

// The status record's Kafka state tells an unreachable Kafka and a topic
// that does not exist, with the reason.
func TestStatusTellsKafkaUnreachableAndFailing(t *testing.T) {
	t.Run("unreachable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now
		b := newBuffer(t)
		appendN(t, b, "s/a", 1)
		f, err := New(Config{Brokers: []string{addr}, Routes: []Route{route(t, "s/+", "t", "")}, ShutdownTimeout: 100 * time.Millisecond}, b)
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, f)
		defer stop()
		waitFor(t, "Kafka unreachable", func() bool { return f.status(b.Stats()).Kafka.State == ConnUnreachable })
		if k := f.status(b.Stats()).Kafka; !strings.Contains(k.LastError, "connect to Kafka broker "+addr) {
			t.Errorf("kafka %+v, want why", k)
		}
	})
	t.Run("failing", func(t *testing.T) {
		c := newCluster(t, "t")
		b := newBuffer(t)
		appendN(t, b, "s/a", 1)
		f, err := New(Config{Brokers: c.ListenAddrs(), Routes: []Route{route(t, "s/+", "missing", "")}, UnknownTopicTimeout: -1}, b)
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, f)
		defer stop()
		waitFor(t, "Kafka failing", func() bool { return f.status(b.Stats()).Kafka.State == ConnFailing })
		if k := f.status(b.Stats()).Kafka; !strings.Contains(k.LastError, "missing") {
			t.Errorf("kafka %+v, want the missing topic named", k)
		}
	})
}

// Each error forwarding waits on stands for one Kafka state.
func TestKafkaStateOfError(t *testing.T) {
	for _, c := range []struct {
		err  error
		want ConnState
	}{
		{fmt.Errorf("%w: 3 records in flight", errStalled), ConnNotAcknowledging},
		{connectError(kgo.BrokerMetadata{Host: "127.0.0.1", Port: 9092}, syscall.ECONNREFUSED), ConnUnreachable},
		{fmt.Errorf("produce: %w", kerr.NotEnoughReplicas), ConnFailing},
		{fmt.Errorf("topic %q: %w", "t", kerr.UnknownTopicOrPartition), ConnFailing},
	} {
		if got := kafkaState(c.err); got != c.want {
			t.Errorf("%v: %s, want %s", c.err, got, c.want)
		}
	}
	if got := connectError(kgo.BrokerMetadata{Host: "127.0.0.1", Port: 9092}, syscall.ECONNREFUSED).Error(); got != "connect to Kafka broker 127.0.0.1:9092: connection refused" {
		t.Errorf("connect error reads %q", got)
	}
}

// The README's section on the status record names every field, and its
// example is a status record.
func TestREADMEDocumentsStatusRecord(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(readme), "\n### The status record\n")
	if !ok {
		t.Fatal("README.md has no section \"### The status record\"")
	}
	if end := strings.Index(sec, "\n#"); end >= 0 {
		sec = sec[:end]
	}
	_, example, _ := strings.Cut(sec, "```json\n")
	example, _, _ = strings.Cut(example, "```")
	dec := json.NewDecoder(strings.NewReader(example))
	dec.DisallowUnknownFields()
	var st Status
	if err := dec.Decode(&st); err != nil || st.GatewayID == "" {
		t.Errorf("the README's example is not a status record: %v\n%s", err, example)
	}
	for _, name := range jsonFields(reflect.TypeFor[Status](), "") {
		if !strings.Contains(sec, "| `"+name+"`") && !strings.Contains(sec, ", `"+name+"`") {
			t.Errorf("the README's status record table does not name `%s`", name)
		}
	}
}

// jsonFields lists the JSON names of t's fields: an array of objects as
// name[] and its fields as name[].field, an object's fields as
// name.field.
func jsonFields(t reflect.Type, prefix string) []string {
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		name = prefix + name
		switch ft := f.Type; {
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, name+"[]")
			out = append(out, jsonFields(ft.Elem(), name+"[].")...)
		case ft.Kind() == reflect.Struct && ft != reflect.TypeFor[time.Time]():
			out = append(out, jsonFields(ft, name+".")...)
		default:
			out = append(out, name)
		}
	}
	return out
}
