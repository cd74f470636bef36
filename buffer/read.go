package buffer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Read returns records with sequence numbers above after, in order,
// appending them to dst[:0]: at most maxRecords of them, and it stops
// before their encoded size would exceed maxBytes (0 or less: no byte
// bound), but it returns at least one record when there is one, however
// large. It waits until at least one such record exists, ctx is done
// (ctx.Err()) or the buffer is closed (ErrClosed); with ctx done already it
// returns what is there without waiting. Records that cannot be decoded are
// dead-lettered (ReasonUndecodable) and not returned. The payloads of one
// Read share one allocation of their size, which lives as long as any of
// them: a caller that keeps only a few should copy them.
func (b *Buffer) Read(ctx context.Context, after uint64, maxRecords, maxBytes int, dst []Record) ([]Record, error) {
	limit := max(maxRecords, 1)
	dst = dst[:0]
	var take []storedRecord
	for {
		b.mu.Lock()
		after = max(after, b.st.head-1) // released or dropped meanwhile: start at the head
		if after >= b.st.next-1 || b.st.count == 0 {
			// Nothing after it on disk: the tail's records not written
			// yet, straight from memory.
			take = b.tl.read(after, limit, maxBytes, b.readable(), take[:0])
			if len(take) == 0 {
				b.waiting = true
				changed := b.changed
				b.mu.Unlock()
				select {
				case <-changed:
					continue
				case <-ctx.Done():
					return dst, ctx.Err()
				case <-b.done:
					return dst, ErrClosed
				}
			}
			b.mu.Unlock()
			return b.decodeTaken(take, dst), nil
		}
		changed := b.changed
		b.mu.Unlock()
		if err := b.Damage(); err != nil {
			return dst, err // no more transactions (see commit)
		}
		var scanned uint64
		b.dbMu.RLock()
		err := guard(func() error {
			return b.db.View(func(tx *bolt.Tx) error {
				// The head as of this transaction: records a limit dropped
				// since the check above are not returned (and then counted
				// as both dropped and delivered).
				if h := getUint(tx.Bucket(bucketMeta), keyHeadSeq); h > after+1 {
					after = h - 1
				}
				// First the records to return, as stored (valid until the
				// transaction ends), then one block for all their payloads.
				take = take[:0]
				size := 0
				c := tx.Bucket(bucketBatches).Cursor()
				k, v := seekBatch(c, after+1)
				readahead(tx, v, readaheadBytes)
			batches:
				for ; k != nil; k, v = c.Next() {
					base := binary.BigEndian.Uint64(k)
					recs, count, perr := parseBatch(base, v)
					if misplaced(perr) {
						return perr // damage: the next start salvages it under its own numbers
					}
					if perr != nil {
						b.log.Error("buffer: damaged batch; salvaging intact records", "path", b.path, "first_seq", base, "err", perr)
					}
					for i, raw := range recs {
						seq := base + uint64(i)
						if seq <= after || len(raw) == 0 {
							continue
						}
						if len(take) == limit || maxBytes > 0 && len(take) > 0 && size+len(raw) > maxBytes {
							break batches
						}
						take = append(take, storedRecord{seq, raw})
						size += len(raw)
						scanned = seq
					}
					if framingBroken(recs, count, perr) { // the rest of the batch is unreadable
						b.DeadLetter(base+uint64(len(recs)), ReasonBrokenBatch, perr)
					}
					scanned = max(scanned, base+uint64(count)-1)
				}
				dst = b.decodeTaken(take, dst)
				b.touched(tx, size)
				return nil
			})
		})
		b.dbMu.RUnlock()
		if err != nil {
			if errors.Is(err, berrors.ErrDatabaseNotOpen) {
				return dst, ErrClosed
			}
			b.markDamaged(err)
			return dst, fmt.Errorf("read buffer %s: %w", b.path, err)
		}
		if len(dst) > 0 {
			return dst, nil
		}
		if scanned > after {
			after = scanned // everything scanned was removed or bad; look further
		} else {
			// Nothing readable up to the last record: wait for more.
			b.mu.Lock()
			stale := b.changed == changed
			if stale {
				b.waiting = true
			}
			b.mu.Unlock()
			if stale {
				select {
				case <-changed:
				case <-ctx.Done():
					return dst, ctx.Err()
				case <-b.done:
					return dst, ErrClosed
				}
			}
		}
	}
}

// readable is the first sequence number Read may not serve from the tail:
// with WriteDelay, the first not reserved on disk; without, every record
// is written before it is read, so the sequence numbers of a crashed
// process's unwritten records are given out again without harm. b.mu is
// held.
func (b *Buffer) readable() uint64 {
	if b.opts.WriteDelay > 0 {
		return b.st.reserved
	}
	return 0
}

// decodeTaken decodes take into dst, the payloads in one block of their
// size. A record that cannot be decoded is dead-lettered.
func (b *Buffer) decodeTaken(take []storedRecord, dst []Record) []Record {
	size := 0
	for _, t := range take {
		size += len(t.raw)
	}
	payloads := arena{block: make([]byte, 0, size)}
	for _, t := range take {
		rec, err := decodeWith(t.raw, &payloads)
		if err != nil {
			b.DeadLetter(t.seq, ReasonUndecodable, err)
			continue
		}
		rec.Seq = t.seq
		dst = append(dst, rec)
	}
	return dst
}

// storedRecord is a record as stored, inside a read transaction, or in the
// tail.
type storedRecord struct {
	seq uint64
	raw []byte
}

// seekBatch positions c on the batch holding seq (or the first after it).
func seekBatch(c *bolt.Cursor, seq uint64) ([]byte, []byte) {
	k, v := c.Seek(seqKey(seq))
	if k != nil && binary.BigEndian.Uint64(k) == seq {
		return k, v
	}
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	if k == nil { // seq is before the first batch
		return c.First()
	}
	base := binary.BigEndian.Uint64(k)
	_, n, _ := parseBatch(base, v)
	if n == 0 { // header unreadable: the batch reaches up to the next one
		if nk, nv := c.Next(); nk != nil && binary.BigEndian.Uint64(nk) <= seq {
			return nk, nv
		}
		return c.Seek(k)
	}
	if base+uint64(n) <= seq {
		return c.Next() // that batch ends before seq
	}
	return k, v
}

func getUint(b *bolt.Bucket, k []byte) uint64 {
	if v := b.Get(k); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// unmapEvery is how many bytes of records Read and the committer go
// through in the file's memory map between two unmapPages. What they went
// through stays mapped until then, and counts in ferry's resident memory;
// one unmapPages costs a system call, and the pages mapped again a minor
// fault per 64 KiB or so. At 1 MiB a 1-million-record drain (about 250 MB
// of records read, and as much released) makes some 500 of each.
const unmapEvery = 1 << 20

// touched counts n bytes of records tx went through in the memory map,
// and drops the map's pages from the process (unmapPages) once they add
// up to unmapEvery.
func (b *Buffer) touched(tx *bolt.Tx, n int) {
	if b.mapped.Add(int64(n)) > unmapEvery {
		b.mapped.Store(0)
		unmapPages(tx)
	}
}

// readaheadBytes is how much of the file Read asks the kernel to read
// ahead of the batch it starts at.
const readaheadBytes = 1 << 20
