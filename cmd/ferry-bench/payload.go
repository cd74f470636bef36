package main

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/ferry-edge/ferry/internal/testenv"
)

// The payload is the JSON testenv.EncodeMessage writes, so
// testenv.DecodeMessage (and a human with kcat) can read it, but of any
// requested size and with fixed field order, so it is encoded and parsed
// here without encoding/json: at tens of thousands of messages a second
// the harness shares the machine with ferry and must stay cheap.
//
//	{"device":"dev-07","seq":12,"sent_at_unix_nano":1700000000000000000,"pad":"xxxx"}
const (
	prefixDevice = `{"device":"dev-`
	prefixSeq    = `","seq":`
	prefixSent   = `,"sent_at_unix_nano":`
	prefixPad    = `,"pad":"`
)

// minPayload is the smallest payload size accepted: room for the fields
// with large numbers (a 4-digit device, a 10-digit seq, a 19-digit time).
const minPayload = len(prefixDevice) + 4 + len(prefixSeq) + 10 + len(prefixSent) + 19 + 1

// stamp is what a payload carries: who sent it, its number in the
// device's sequence and when it was sent.
type stamp struct {
	device int   // index, as in testenv.DeviceName
	seq    int64 // 0, 1, ... per device
	sentAt int64 // unix nanoseconds, taken just before the publish
}

// appendPayload appends the payload for s to dst, padded to exactly size
// bytes (more only when size is below minPayload). Padding is a "pad"
// string field when it fits, else spaces before the closing brace (still
// JSON).
func appendPayload(dst []byte, s stamp, size int) []byte {
	start := len(dst)
	dst = append(dst, prefixDevice...)
	name := testenv.DeviceName(s.device)
	dst = append(dst, name[len("dev-"):]...)
	dst = append(dst, prefixSeq...)
	dst = strconv.AppendInt(dst, s.seq, 10)
	dst = append(dst, prefixSent...)
	dst = strconv.AppendInt(dst, s.sentAt, 10)
	room := size - (len(dst) - start) - 1 // less the closing brace
	if pad := room - len(prefixPad) - 1; pad >= 0 {
		dst = append(dst, prefixPad...)
		dst = append(dst, bytes.Repeat([]byte{'x'}, pad)...)
		dst = append(dst, '"')
	} else if room > 0 {
		dst = append(dst, bytes.Repeat([]byte{' '}, room)...)
	}
	return append(dst, '}')
}

var errNotBenchPayload = errors.New("not a ferry-bench payload")

// parsePayload reads the stamp from a payload written by appendPayload.
func parsePayload(b []byte) (stamp, error) {
	var s stamp
	rest, ok := bytes.CutPrefix(b, []byte(prefixDevice))
	if !ok {
		return s, errNotBenchPayload
	}
	dev, rest, err := leadingInt(rest)
	if err != nil {
		return s, fmt.Errorf("%w: device: %v", errNotBenchPayload, err)
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(prefixSeq)); !ok {
		return s, fmt.Errorf("%w: no seq", errNotBenchPayload)
	}
	seq, rest, err := leadingInt(rest)
	if err != nil {
		return s, fmt.Errorf("%w: seq: %v", errNotBenchPayload, err)
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(prefixSent)); !ok {
		return s, fmt.Errorf("%w: no send time", errNotBenchPayload)
	}
	sent, _, err := leadingInt(rest)
	if err != nil {
		return s, fmt.Errorf("%w: send time: %v", errNotBenchPayload, err)
	}
	return stamp{device: int(dev), seq: seq, sentAt: sent}, nil
}

// leadingInt parses the decimal digits at the start of b.
func leadingInt(b []byte) (int64, []byte, error) {
	var n int64
	i := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		d := int64(b[i] - '0')
		if n > (math.MaxInt64-d)/10 {
			return 0, b, errors.New("number too large")
		}
		n = n*10 + d
	}
	if i == 0 {
		return 0, b, errors.New("no digits")
	}
	return n, b[i:], nil
}
