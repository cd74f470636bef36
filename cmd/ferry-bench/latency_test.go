package main

import (
	"math"
	"testing"
	"time"
)

// TestHistogram checks quantiles against exact ones.
func TestHistogram(t *testing.T) {
	var h histogram
	for i := 1; i <= 100000; i++ {
		h.record(time.Duration(i) * 10 * time.Microsecond) // 10µs .. 1s
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {0.00001, 10 * time.Microsecond}} {
		got := h.quantile(c.q)
		if rel := math.Abs(float64(got-c.want)) / float64(c.want); rel > 0.035 {
			t.Errorf("quantile %g = %v, want %v within 3.5%%", c.q, got, c.want)
		}
	}
	if h.max != time.Second || h.quantile(1) != time.Second {
		t.Errorf("max %v, quantile(1) %v, want 1s", h.max, h.quantile(1))
	}
	for v := uint64(0); v < 1<<20; v = v*9/8 + 1 {
		if i := bucketOf(v); bucketUpper(i) < v || (i > 0 && bucketUpper(i-1) >= v) {
			t.Fatalf("value %d in bucket %d, which ends at %d (the one before at %d)", v, i, bucketUpper(i), bucketUpper(i-1))
		}
	}
	if i := bucketOf(math.MaxUint64); i >= histBuckets {
		t.Fatalf("bucket %d of MaxUint64 is beyond %d buckets", i, histBuckets)
	}
}
