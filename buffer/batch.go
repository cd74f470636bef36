package buffer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// A batch is the bbolt value that holds the records of one commit, under the
// key of its first sequence number; record i has sequence number key+i.
// Storing many records per value keeps bbolt's per-key and per-page
// overhead low and makes releasing a prefix one delete per batch.
//
//	magic(1)=0xFB version(1)=2 base(uvarint) count(uvarint)
//	count x { len(uvarint) record(len bytes) }   len 0: a removed record
//	crc32c(4, big endian) of everything before it
//
// base repeats the key under the checksum. bbolt's key is not covered by
// any checksum: a bit flipped in it would give the batch's records other
// numbers, and a salvage that must read the file page by page, with the
// tree's order lost, would deliver them out of place. A batch whose base
// is not its key is damage in the file (Open's check and the reader
// report it; see misplacedError), and a salvage, through the tree or page
// by page, takes a batch whose checksum holds under its base, whatever
// its key. Version 1 batches (no base) are read as before: there the key
// is all there is.
//
// Each record carries its own checksum too (see appendEncoded), so when a
// batch's checksum fails, the records that are still intact can be told
// from the damaged ones.
const (
	batchMagic = 0xFB
	batchV1    = 1 // no base: files written before version 2
	batchV2    = 2
)

// appendBatch appends a batch of the records from base on, recs (encoded
// records; nil or empty for a removed one), to dst.
func appendBatch(dst []byte, base uint64, recs [][]byte) []byte {
	start := len(dst)
	dst = append(dst, batchMagic, batchV2)
	dst = binary.AppendUvarint(dst, base)
	dst = binary.AppendUvarint(dst, uint64(len(recs)))
	for _, r := range recs {
		dst = binary.AppendUvarint(dst, uint64(len(r)))
		dst = append(dst, r...)
	}
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// batchSize is the size appendBatch will need for recs.
func batchSize(recs [][]byte) int {
	n := 2 + 2*binary.MaxVarintLen64 + 4
	for _, r := range recs {
		n += binary.MaxVarintLen64 + len(r)
	}
	return n
}

// batchHeader reads a batch's header, without checking or framing the
// rest: its base (hasBase false for version 1), the number of records it
// announces, and the length of the header.
func batchHeader(v []byte) (base uint64, hasBase bool, count, size int, ok bool) {
	if len(v) < 3 || v[0] != batchMagic || v[1] != batchV1 && v[1] != batchV2 {
		return 0, false, 0, 0, false
	}
	size = 2
	if v[1] == batchV2 {
		b, l := binary.Uvarint(v[size:])
		if l <= 0 {
			return 0, false, 0, 0, false
		}
		base, hasBase, size = b, true, size+l
	}
	n, l := binary.Uvarint(v[size:])
	if l <= 0 || n > uint64(len(v)-size-l) { // every record takes at least one byte
		return 0, false, 0, 0, false
	}
	return base, hasBase, int(n), size + l, true
}

// batchCount reads the number of records a batch's header announces,
// without checking or framing the rest.
func batchCount(v []byte) (int, bool) {
	_, _, n, _, ok := batchHeader(v)
	return n, ok
}

// parseBatch splits the batch under key into its encoded records, which
// point into v. count is the number of records the header announces. On
// damage it returns the records it could frame and an error wrapping
// ErrCorrupt: with a bad checksum but sound framing, all of them (each
// still has its own checksum); with broken framing, those before the
// break (len(recs) < count). A batch whose base is not key returns no
// records, as if its framing were broken: under key, their numbers are
// wrong. If its checksum holds, the key is what is damaged, and the error
// is a *misplacedError (wrapping ErrCorruptFile: damage in the file, for
// the salvage to put right, not a batch to set aside; see misplaced).
func parseBatch(key uint64, v []byte) (recs [][]byte, count int, err error) {
	if len(v) < 2+1+4 {
		return nil, 0, fmt.Errorf("%w: batch of %d bytes is too short", ErrCorrupt, len(v))
	}
	if v[0] != batchMagic || v[1] != batchV1 && v[1] != batchV2 {
		return nil, 0, fmt.Errorf("%w: batch header %x is not a batch of version 1 or 2", ErrCorrupt, v[:2])
	}
	body := v[:len(v)-4]
	sumOK := crc32.Checksum(body, castagnoli) == binary.BigEndian.Uint32(v[len(v)-4:])
	base, hasBase, n, hsize, ok := batchHeader(body)
	if !ok || n > len(body)-hsize { // every record takes at least one byte
		return nil, 0, fmt.Errorf("%w: batch record count unreadable", ErrCorrupt)
	}
	count = n
	if hasBase && base != key {
		if sumOK {
			return nil, count, &misplacedError{key: key, base: base, n: 1}
		}
		return nil, count, fmt.Errorf("%w: batch of the records from %d under key %d", ErrCorrupt, base, key)
	}
	d := decoder{buf: body[hsize:]}
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

// misplaced reports whether err is parseBatch's for a sound batch under a
// damaged key.
func misplaced(err error) bool {
	var m *misplacedError
	return errors.As(err, &m)
}

// framingBroken reports whether parseBatch could not frame every record
// (as opposed to a checksum mismatch with sound framing).
func framingBroken(recs [][]byte, count int, err error) bool {
	return err != nil && (count == 0 || len(recs) < count)
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }
