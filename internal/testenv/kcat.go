package testenv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// EnvRequireKcat names the environment variable that, set to "1", makes a
// missing kcat a test failure instead of a skipped cross-check.
const EnvRequireKcat = "FERRY_REQUIRE_KCAT"

// KcatRecord is one record as kcat (librdkafka, an independent client) read
// it with -J.
type KcatRecord struct {
	Partition int32    `json:"partition"`
	Offset    int64    `json:"offset"`
	Timestamp int64    `json:"ts"` // milliseconds
	Key       *string  `json:"key"`
	Payload   *string  `json:"payload"`
	Headers   []string `json:"headers"` // key, value, key, value, ...
}

// Kcat reads every record of topic from the beginning with kcat.
func Kcat(ctx context.Context, k *Kafka, topic string) ([]KcatRecord, error) {
	args := []string{"-C", "-b", strings.Join(k.Brokers(), ","), "-t", topic, "-o", "beginning", "-e", "-J", "-q"}
	switch k.Listener() {
	case "tls":
		args = append(args, "-X", "security.protocol=SSL", "-X", "ssl.ca.location="+os.Getenv("FERRY_TEST_KAFKA_TLS_CA"))
		if cert := os.Getenv("FERRY_TEST_KAFKA_TLS_CERT"); cert != "" {
			args = append(args, "-X", "ssl.certificate.location="+cert, "-X", "ssl.key.location="+os.Getenv("FERRY_TEST_KAFKA_TLS_KEY"))
		}
	case "sasl":
		return nil, fmt.Errorf("kcat: Debian's kcat (librdkafka 2.0.2) cannot authenticate with SCRAM to Kafka 4 (edenhill/kcat#462)")
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "kcat", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("kcat %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	var recs []KcatRecord
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var r KcatRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("kcat output %q: %w", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs, sc.Err()
}

// CrossCheckKcat reads topic back with kcat and fails t unless kcat sees
// exactly the records the collector saw, with the same keys, values,
// headers and timestamps. Without kcat (and EnvRequireKcat unset), or on a
// listener kcat cannot use, it only logs why it did not check.
func CrossCheckKcat(t testing.TB, k *Kafka, topic string, seen []Received) {
	t.Helper()
	if _, err := exec.LookPath("kcat"); err != nil {
		if os.Getenv(EnvRequireKcat) == "1" {
			t.Fatalf("%s=1 but kcat is not installed: %v", EnvRequireKcat, err)
		}
		t.Log("kcat cross-check skipped: kcat is not installed")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got, err := Kcat(ctx, k, topic)
	if err != nil && k.Listener() == "sasl" {
		t.Logf("kcat cross-check skipped: %v", err)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	type pos struct {
		p int32
		o int64
	}
	byPos := make(map[pos]KcatRecord, len(got))
	for _, r := range got {
		byPos[pos{r.Partition, r.Offset}] = r
	}
	if len(got) != len(seen) {
		t.Fatalf("kcat read %d records, the collector %d", len(got), len(seen))
	}
	for _, s := range seen {
		r, ok := byPos[pos{s.Partition, s.Offset}]
		if !ok {
			t.Fatalf("kcat did not read partition %d offset %d", s.Partition, s.Offset)
		}
		var hs []string
		for _, h := range s.Headers {
			hs = append(hs, h.Key, string(h.Value))
		}
		switch {
		case r.Key == nil || *r.Key != string(s.Key):
			t.Fatalf("partition %d offset %d: kcat key %v, collector %q", s.Partition, s.Offset, r.Key, s.Key)
		case r.Payload == nil:
			t.Fatalf("partition %d offset %d: kcat read no payload", s.Partition, s.Offset)
		case r.Timestamp != s.Timestamp.UnixMilli():
			t.Fatalf("partition %d offset %d: kcat timestamp %d, collector %d", s.Partition, s.Offset, r.Timestamp, s.Timestamp.UnixMilli())
		case !slices.Equal(r.Headers, hs):
			t.Fatalf("partition %d offset %d: kcat headers %q, collector %q", s.Partition, s.Offset, r.Headers, hs)
		}
		if m, err := DecodeMessage([]byte(*r.Payload)); err != nil || m != s.Msg {
			t.Fatalf("partition %d offset %d: kcat payload decodes to %+v (%v), collector %+v", s.Partition, s.Offset, m, err, s.Msg)
		}
	}
	t.Logf("kcat cross-check: %d records match (keys, values, headers, timestamps)", len(got))
}
