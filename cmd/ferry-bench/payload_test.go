package main

import (
	"math"
	"testing"
	"time"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// TestPayload checks that payloads have exactly the requested size, parse
// back, and read as testenv's sensor messages.
func TestPayload(t *testing.T) {
	for _, size := range []int{minPayload, minPayload + 5, 200, 4096} {
		for _, s := range []stamp{{0, 0, 1}, {99, 123456, time.Now().UnixNano()}, {9999, 9999999999, math.MaxInt64}} {
			b := appendPayload(nil, s, size)
			if len(b) != size {
				t.Errorf("size %d, %+v: got %d bytes: %s", size, s, len(b), b)
			}
			got, err := parsePayload(b)
			if err != nil || got != s {
				t.Errorf("size %d: parse %s = %+v, %v; want %+v", size, b, got, err, s)
			}
			m, err := testenv.DecodeMessage(b)
			if err != nil || m.Device != testenv.DeviceName(s.device) || int64(m.Seq) != s.seq || m.SentAt != s.sentAt {
				t.Errorf("size %d: testenv.DecodeMessage(%s) = %+v, %v", size, b, m, err)
			}
		}
	}
	for _, bad := range []string{"", "{}", `{"device":"dev-x"`, `{"device":"dev-01","seq":}`, `{"device":"dev-01","seq":1,"sent_at_unix_nano":99999999999999999999}`} {
		if _, err := parsePayload([]byte(bad)); err == nil {
			t.Errorf("parsePayload(%q) succeeded", bad)
		}
	}
}
