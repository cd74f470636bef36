package forward

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-edge/ferry/buffer"
	"github.com/ferry-edge/ferry/internal/testenv"
	"github.com/ferry-edge/ferry/internal/topic"
)

// tmpl parses a template for a route with match (nil: a default route).
func tmpl(t *testing.T, match *topic.Pattern, s string) *topic.Template {
	t.Helper()
	tt, err := topic.ParseTemplate(s, topic.TemplateNames(match))
	if err != nil {
		t.Fatal(err)
	}
	return tt
}

func pattern(t *testing.T, s string) *topic.Pattern {
	t.Helper()
	p, err := topic.ParsePattern(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func headerMap(hs []kgo.RecordHeader) map[string]string {
	m := map[string]string{}
	for _, h := range hs {
		m[h.Key] = string(h.Value)
	}
	return m
}

// The route table: first match wins; {#}, {gateway_id}, per-route
// headers, drop routes and a default route; the late header.
func TestRouteTable(t *testing.T) {
	debug := pattern(t, "sensors/debug/#")
	dev := pattern(t, "sensors/{device}/#")
	other := pattern(t, "plant/{line}/+")
	env := pattern(t, "plant/{line}/status")
	routes := []Route{
		{Match: debug, Drop: true},
		{Match: dev, Topic: tmpl(t, dev, "sensors.{device}"), Key: tmpl(t, dev, "{gateway_id}/{device}/{#}"),
			Headers: []Header{{Name: "site", Value: tmpl(t, dev, "hall-3")}, {Name: "rest", Value: tmpl(t, dev, "{#}")}}},
		{Match: env, Topic: tmpl(t, env, "status"), Format: FormatEnvelope},
		{Match: other, Topic: tmpl(t, other, "plant.{gateway_id}.{line}")},
		{Topic: tmpl(t, nil, "unmatched"), Key: tmpl(t, nil, "{#}")},
	}
	f := &Forwarder{cfg: Config{GatewayID: "gw-7", LateAfter: time.Minute}, gateway: []byte("gw-7"), bufferID: []byte("id")}
	if err := f.SetRoutes(routes); err != nil {
		t.Fatal(err)
	}
	routes = *f.routes.Load() // as Run uses them: static header values made once
	now := time.Now()
	tests := []struct {
		topic   string
		late    time.Duration // how long before now it was received
		result  routeResult
		kafka   string
		key     string
		headers map[string]string // expected among the record's headers; "" means absent
	}{
		{topic: "sensors/debug/x", result: dropped},
		{topic: "sensors/debug", result: dropped}, // '#' matches the parent level
		{topic: "sensors/dev1/temp/c", result: routed, kafka: "sensors.dev1", key: "gw-7/dev1/temp/c",
			headers: map[string]string{"site": "hall-3", "rest": "temp/c", HeaderLate: ""}},
		{topic: "sensors/dev1", result: routed, kafka: "sensors.dev1", key: "gw-7/dev1/", headers: map[string]string{"rest": ""}},
		{topic: "plant/l2/status", result: routed, kafka: "status"},
		{topic: "plant/l2/x", result: routed, kafka: "plant.gw-7.l2", headers: map[string]string{"site": ""}},
		{topic: "$SYS/broker/load", result: routed, kafka: "unmatched", key: "$SYS/broker/load"},
		{topic: "elsewhere", late: 90 * time.Second, result: routed, kafka: "unmatched", key: "elsewhere",
			headers: map[string]string{HeaderLate: "90000"}},
		{topic: "elsewhere", late: 59 * time.Second, result: routed, kafka: "unmatched", headers: map[string]string{HeaderLate: ""}},
	}
	for _, tt := range tests {
		rec := &buffer.Record{Topic: tt.topic, Payload: []byte("p"), QoS: 1, ReceivedAt: now.Add(-tt.late), Seq: 42}
		var kr kgo.Record
		res, _ := f.route(routes, rec, now, &kr, nil, nil, nil)
		if res != tt.result {
			t.Errorf("%q: result %v, want %v", tt.topic, res, tt.result)
			continue
		}
		if res != routed {
			continue
		}
		if tt.kafka == "status" {
			var e struct {
				Topic     string `json:"topic"`
				GatewayID string `json:"gateway_id"`
				Payload   string `json:"payload"`
			}
			if err := json.Unmarshal(kr.Value, &e); err != nil || e.Topic != tt.topic || e.GatewayID != "gw-7" || e.Payload != "p" {
				t.Errorf("%q: envelope %s (%v)", tt.topic, kr.Value, err)
			}
		} else if string(kr.Value) != "p" {
			t.Errorf("%q: value %q, want the raw payload", tt.topic, kr.Value)
		}
		h := headerMap(kr.Headers)
		if kr.Topic != tt.kafka || tt.key != "" && string(kr.Key) != tt.key || h[HeaderSeq] != "42" || h[HeaderGateway] != "gw-7" {
			t.Errorf("%q: topic %q key %q headers %v; want topic %q key %q", tt.topic, kr.Topic, kr.Key, h, tt.kafka, tt.key)
		}
		for k, v := range tt.headers {
			if got, ok := h[k]; v == "" && ok && k != "rest" || v != "" && got != v || k == "rest" && v == "" && (!ok || got != "") {
				t.Errorf("%q: header %s = %q (present %v), want %q", tt.topic, k, got, ok, v)
			}
		}
	}
}

// A record received while the clock was not synchronized gets no late
// header however old its timestamp looks, and LateAfter below zero turns
// the header off.
func TestLateHeaderNeedsATrustworthyClock(t *testing.T) {
	m := pattern(t, "#")
	routes := []Route{{Match: m, Topic: tmpl(t, m, "t")}}
	old := time.Now().Add(-time.Hour)
	for _, tt := range []struct {
		lateAfter time.Duration
		unsynced  bool
	}{{time.Minute, true}, {-1, false}} {
		f := &Forwarder{cfg: Config{GatewayID: "gw", LateAfter: tt.lateAfter}}
		var kr kgo.Record
		f.route(routes, &buffer.Record{Topic: "a", ReceivedAt: old, ClockUnsynced: tt.unsynced}, time.Now(), &kr, nil, nil, nil)
		if _, ok := headerMap(kr.Headers)[HeaderLate]; ok {
			t.Errorf("LateAfter %v, unsynced %v: a late header", tt.lateAfter, tt.unsynced)
		}
	}
}

// Records that wait out an outage in the buffer longer than LateAfter
// arrive with ferry.late_ms; their timestamp stays the receive time;
// records after the outage arrive without it. (A window of one record:
// the first record is in the producer's hands for the outage, the second
// waits in the buffer.) Records of a drop route are counted and released,
// never produced.
func TestLateHeaderAfterAnOutageAndDropRoutes(t *testing.T) {
	k, err := testenv.StartKafkaWith(testenv.KafkaConfig{Partitions: 1}, "t")
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	b := newBuffer(t)
	drop, all := pattern(t, "debug/#"), pattern(t, "#")
	f, err := New(Config{Brokers: k.Brokers(), GatewayID: "gw", LateAfter: time.Second, MaxBufferedRecords: 1,
		Routes: []Route{{Match: drop, Drop: true}, {Match: all, Topic: tmpl(t, all, "t")}}}, b)
	if err != nil {
		t.Fatal(err)
	}
	k.SetReachable(false)
	stop := run(t, f)
	defer stop()
	appendAt := func(topicName string, at time.Time) {
		t.Helper()
		if _, err := b.AppendWait(context.Background(), &buffer.Record{Topic: topicName, Payload: []byte(topicName), QoS: 1, ReceivedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	during := time.Now()
	appendAt("in-flight", during)
	appendAt("debug/x", during)
	appendAt("buffered", during)
	time.Sleep(1500 * time.Millisecond) // the outage outlasts LateAfter
	k.SetReachable(true)
	waitFor(t, "the outage's records", func() bool { return f.Stats().Delivered == 2 })
	appendAt("after", time.Now())
	recs := consume(t, k.Cluster, "t", 3)
	var got []string
	for _, r := range recs {
		got = append(got, string(r.Value))
	}
	if !slices.Equal(got, []string{"in-flight", "buffered", "after"}) {
		t.Fatalf("records %q", got)
	}
	if ms, err := strconv.Atoi(headerMap(recs[1].Headers)[HeaderLate]); err != nil || ms < 1000 {
		t.Errorf("the record buffered through the outage has %s %d (%v), want 1000 or more", HeaderLate, ms, err)
	}
	if !recs[1].Timestamp.Equal(during.Truncate(time.Millisecond)) {
		t.Errorf("timestamp %v, want the receive time %v", recs[1].Timestamp, during)
	}
	if v, ok := headerMap(recs[2].Headers)[HeaderLate]; ok {
		t.Errorf("a live record has %s %q", HeaderLate, v)
	}
	waitFor(t, "the buffer to drain", func() bool { return b.Stats().Records == 0 })
	if st := f.Stats(); st.DroppedByRoute != 1 || st.Unrouted != 0 {
		t.Errorf("dropped by route %d, unrouted %d; want 1, 0", st.DroppedByRoute, st.Unrouted)
	}
}
