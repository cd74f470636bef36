package main

import (
	"math/bits"
	"time"
)

// histogram counts durations in log-linear buckets of microseconds: exact
// below 64 µs, then 32 buckets per power of two, so a quantile is within
// about 3% of the true value (it reports the bucket's upper bound, never
// above the maximum, which is kept exactly). Its memory is fixed whatever
// the number of samples. The zero value is ready; it is not safe for
// concurrent use.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	max    time.Duration
}

const (
	histSubBits = 5                                // 32 sub-buckets per power of two
	histSub     = 1 << histSubBits                 // 32
	histBuckets = (64 - histSubBits + 1) * histSub // covers every uint64 value
)

// bucketOf returns the bucket index of v microseconds.
func bucketOf(v uint64) int {
	if v < 2*histSub {
		return int(v)
	}
	e := bits.Len64(v) - histSubBits - 1 // v>>e is in [histSub, 2*histSub)
	return e*histSub + int(v>>e)
}

// bucketUpper returns the largest value in bucket i, in microseconds.
func bucketUpper(i int) uint64 {
	if i < 2*histSub {
		return uint64(i)
	}
	e := i/histSub - 1
	m := uint64(i - e*histSub)
	return (m+1)<<e - 1
}

// record adds one duration; negative ones (clock steps) count as zero.
func (h *histogram) record(d time.Duration) {
	d = max(d, 0)
	h.counts[bucketOf(uint64(d/time.Microsecond))]++
	h.n++
	h.max = max(h.max, d)
}

// quantile returns the q-quantile (0 < q <= 1), or 0 without samples.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(time.Duration(bucketUpper(i))*time.Microsecond, h.max)
		}
	}
	return h.max
}
