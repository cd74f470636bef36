package buffer

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// A batch is the bbolt value that holds the records of one commit, under the
// key of its first sequence number; record i has sequence number key+i.
// Storing many records per value keeps bbolt's per-key and per-page
// overhead low and makes releasing a prefix one delete per batch.
//
//	magic(1)=0xFB version(1)=1 count(uvarint)
//	count x { len(uvarint) record(len bytes) }   len 0: a removed record
//	crc32c(4, big endian) of everything before it
//
// Each record carries its own checksum too (see appendEncoded), so when a
// batch's checksum fails, the records that are still intact can be told
// from the damaged ones.
const (
	batchMagic = 0xFB
	batchV1    = 1
)

// appendBatch appends a batch holding recs (encoded records; nil or empty
// for a removed one) to dst.
func appendBatch(dst []byte, recs [][]byte) []byte {
	start := len(dst)
	dst = append(dst, batchMagic, batchV1)
	dst = binary.AppendUvarint(dst, uint64(len(recs)))
	for _, r := range recs {
		dst = binary.AppendUvarint(dst, uint64(len(r)))
		dst = append(dst, r...)
	}
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// batchSize is the size appendBatch will need for recs.
func batchSize(recs [][]byte) int {
	n := 2 + binary.MaxVarintLen64 + 4
	for _, r := range recs {
		n += binary.MaxVarintLen64 + len(r)
	}
	return n
}

// parseBatch splits a batch into its encoded records, which point into v.
// count is the number of records the header announces. On damage it returns
// the records it could frame and an error wrapping ErrCorrupt: with a bad
// checksum but sound framing, all of them (each still has its own
// checksum); with broken framing, those before the break (len(recs) <
// count).
func parseBatch(v []byte) (recs [][]byte, count int, err error) {
	if len(v) < 2+1+4 {
		return nil, 0, fmt.Errorf("%w: batch of %d bytes is too short", ErrCorrupt, len(v))
	}
	if v[0] != batchMagic || v[1] != batchV1 {
		return nil, 0, fmt.Errorf("%w: batch header %x is not a version 1 batch", ErrCorrupt, v[:2])
	}
	body := v[:len(v)-4]
	sumOK := crc32.Checksum(body, castagnoli) == binary.BigEndian.Uint32(v[len(v)-4:])
	d := decoder{buf: body[2:]}
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.buf)) { // every record takes at least one byte
		return nil, 0, fmt.Errorf("%w: batch record count unreadable", ErrCorrupt)
	}
	count = int(n)
	recs = make([][]byte, 0, count)
	for range count {
		r := d.bytes()
		if d.err != nil {
			return recs, count, fmt.Errorf("%w: batch framing broken after %d of %d records", ErrCorrupt, len(recs), count)
		}
		recs = append(recs, r)
	}
	if len(d.buf) != 0 {
		return recs, count, fmt.Errorf("%w: %d bytes after the batch's last record", ErrCorrupt, len(d.buf))
	}
	if !sumOK {
		return recs, count, fmt.Errorf("%w: batch checksum mismatch", ErrCorrupt)
	}
	return recs, count, nil
}

// framingBroken reports whether parseBatch could not frame every record
// (as opposed to a checksum mismatch with sound framing).
func framingBroken(recs [][]byte, count int, err error) bool {
	return err != nil && (count == 0 || len(recs) < count)
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }
