package testenv

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func sensorRecord(dev string, seq int) *kgo.Record {
	return &kgo.Record{
		Key:     []byte(dev),
		Value:   EncodeMessage(Message{Device: dev, Seq: seq, SentAt: time.Now().UnixNano()}),
		Headers: []kgo.RecordHeader{{Key: "mqtt_topic", Value: []byte("sensors/" + dev + "/telemetry")}},
	}
}

// TestCollector produces a known mix of records straight to Kafka: one
// device complete, one with a lost and a duplicated message, one out of
// order, and one record that is not a sensor message.
func TestCollector(t *testing.T) {
	k := NewKafka(t, "telemetry")
	var recs []*kgo.Record
	for seq := range 10 {
		recs = append(recs, sensorRecord("dev-00", seq))
	}
	for _, seq := range []int{0, 1, 2, 3, 3, 4, 6, 7, 8, 9} { // 5 lost, 3 twice
		recs = append(recs, sensorRecord("dev-01", seq))
	}
	for _, seq := range []int{0, 1, 3, 2, 4} { // 2 after 3
		recs = append(recs, sensorRecord("dev-02", seq))
	}
	recs = append(recs, &kgo.Record{Key: []byte("dev-03"), Value: []byte("not json")})
	produceSync(t, k.Brokers(), "telemetry", recs...)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := StartCollector(ctx, k.Brokers(), "telemetry")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for c.Count() < int64(len(recs)) {
		if ctx.Err() != nil {
			t.Fatalf("collector consumed %d of %d records (last error %v)", c.Count(), len(recs), c.LastError())
		}
		time.Sleep(10 * time.Millisecond)
	}

	res := &SensorsResult{Acked: map[string]int{"dev-00": 10, "dev-01": 10, "dev-02": 5}}
	got := c.Report(res)
	want := Report{
		Sent: 25, Delivered: 25, Unique: 24, Duplicates: 1, Lost: 1, OutOfOrder: 1,
		Unparsed: 1, LostSample: []string{"dev-01#5"},
		OutOfOrderSample: []string{"dev-02#2 after #3 (partition 3 offset 3)"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("report\n got %s\nwant %s", got, want)
	}
	if got.OK() {
		t.Error("OK() = true for a report with losses")
	}
	const line = "sent=25 delivered=25 unique=24 lost=1 duplicates=1 out_of_order=1 unparsed=1 lost_sample=[dev-01#5]" +
		" out_of_order_sample=[dev-02#2 after #3 (partition 3 offset 3)]"
	if got.String() != line {
		t.Errorf("String() = %q, want %q", got.String(), line)
	}

	// Records keep key, headers and timestamp for later checks.
	for _, r := range c.Records() {
		if string(r.Key) != r.Msg.Device || len(r.Headers) != 1 || r.Timestamp.IsZero() {
			t.Fatalf("record lost its metadata: %+v", r)
		}
	}

	// WaitFor returns at once for what is all there, and at the deadline
	// for what never comes.
	if r := c.WaitFor(ctx, &SensorsResult{Acked: map[string]int{"dev-00": 10}}); r.Lost != 0 {
		t.Errorf("WaitFor(dev-00 only) = %s, want no loss", r)
	}
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if r := c.WaitFor(short, res); r.Lost != 1 {
		t.Errorf("WaitFor(all) = %s, want lost=1", r)
	}
}

func TestBuildReport(t *testing.T) {
	rec := func(dev string, seq int, part int32, off int64) Received {
		return Received{Msg: Message{Device: dev, Seq: seq}, Partition: part, Offset: off}
	}
	for _, tc := range []struct {
		name  string
		acked map[string]int
		recs  []Received
		want  Report
	}{
		{
			name:  "empty",
			acked: map[string]int{},
			want:  Report{},
		},
		{
			name:  "all lost",
			acked: map[string]int{"d": 2},
			want:  Report{Sent: 2, Lost: 2, LostSample: []string{"d#0", "d#1"}},
		},
		{
			name:  "offset order wins over consumption order",
			acked: map[string]int{"d": 3},
			recs:  []Received{rec("d", 2, 0, 12), rec("d", 0, 0, 10), rec("d", 1, 0, 11)},
			want:  Report{Sent: 3, Delivered: 3, Unique: 3},
		},
		{
			name:  "duplicate of an earlier seq is not out of order",
			acked: map[string]int{"d": 3},
			recs:  []Received{rec("d", 0, 0, 0), rec("d", 1, 0, 1), rec("d", 0, 0, 2), rec("d", 2, 0, 3)},
			want:  Report{Sent: 3, Delivered: 4, Unique: 3, Duplicates: 1},
		},
		{
			name:  "delivered but not acked",
			acked: map[string]int{"d": 1},
			recs:  []Received{rec("d", 0, 0, 0), rec("d", 1, 0, 1), rec("e", 0, 1, 0)},
			want:  Report{Sent: 1, Delivered: 3, Unique: 3, Unacked: 2},
		},
		{
			name:  "device split over partitions",
			acked: map[string]int{"d": 2},
			recs:  []Received{rec("d", 0, 0, 0), rec("d", 1, 1, 0)},
			want:  Report{Sent: 2, Delivered: 2, Unique: 2, SplitDevices: 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := buildReport(&SensorsResult{Acked: tc.acked}, tc.recs, 0)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestEncodeMessage(t *testing.T) {
	m := Message{Device: "dev-07", Seq: 123456, SentAt: time.Now().UnixNano()}
	b := EncodeMessage(m)
	if len(b) < payloadSize-5 || len(b) > payloadSize+5 {
		t.Errorf("payload is %d bytes, want about %d: %s", len(b), payloadSize, b)
	}
	got, err := DecodeMessage(b)
	if err != nil || got != m {
		t.Fatalf("DecodeMessage = %+v, %v; want %+v", got, err, m)
	}
	if _, err := DecodeMessage([]byte(`{"seq":1}`)); err == nil {
		t.Error("DecodeMessage accepted a message without device")
	}
}
