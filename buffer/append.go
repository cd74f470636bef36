package buffer

import (
	"context"
	"time"
)

// Append gives rec the next sequence number, adds it to the tail and
// returns without waiting for it to be durable. done is called exactly
// once: with the record's sequence number and a nil error once it is
// durable (written, or with WriteDelay delivered first; see the package
// comment), or with the error of the commit that failed to write it.
// Callbacks run in append order, from the committer or from a caller of
// Release or Remove, and must not block. Append blocks while the tail is
// full (QueueSize, QueueBytes; with Block, while the buffer is full and
// nothing is delivered), and fails with ErrClosed after Close. rec is
// encoded before Append returns; the caller may reuse it.
func (b *Buffer) Append(rec *Record, done func(seq uint64, err error)) error {
	_, err := b.add(rec, done, true)
	return err
}

// TryAppend is Append without the wait: where Append would wait for room
// in the tail (or for a replay of dead letters to take its sequence
// numbers), TryAppend returns false at once, and rec is not taken (done is
// not called).
func (b *Buffer) TryAppend(rec *Record, done func(seq uint64, err error)) (bool, error) {
	return b.add(rec, done, false)
}

// add is Append, or TryAppend unless wait.
func (b *Buffer) add(rec *Record, done func(seq uint64, err error), wait bool) (bool, error) {
	val := appendEncoded(make([]byte, 0, 64+len(rec.Topic)+len(rec.Payload)), rec)
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed {
		return false, ErrClosed
	}
	if ok, err := b.reserve(len(val), wait); !ok {
		return false, err
	}
	b.mu.Lock()
	for b.hold != nil { // a replay is taking sequence numbers
		if !wait {
			b.mu.Unlock()
			b.unreserve(len(val), 1)
			return false, nil
		}
		hold := b.hold
		b.mu.Unlock()
		select {
		case <-hold:
		case <-b.quit:
			b.unreserve(len(val), 1)
			return false, ErrClosed
		}
		b.mu.Lock()
	}
	at := time.Since(b.born)
	// Wake the committer for a commit to make, or for a deadline to set
	// unless it wakes by then anyway: at a steady rate it wakes about once
	// per write delay, not once per record.
	wake := b.opts.WriteDelay <= 0 || b.tl.pending == 0 && (b.wakeAt < 0 || b.wakeAt > at+b.delay) ||
		len(b.tl.live())+1 == b.opts.MaxTailRecords
	b.tl.push(entry{seq: b.next, val: val, done: done, at: at})
	b.next++
	b.notifyLocked()
	b.mu.Unlock()
	if wake {
		b.signal()
	}
	return true, nil
}

// reserve waits until a record of n bytes fits in the tail (QueueSize,
// QueueBytes, or the tail is empty) and counts it; unless wait, it returns
// false instead of waiting.
func (b *Buffer) reserve(n int, wait bool) (bool, error) {
	b.qmu.Lock()
	for b.queuedN > 0 && (b.queued+n > b.opts.QueueBytes || b.queuedN >= b.opts.QueueSize) {
		if !wait {
			b.qmu.Unlock()
			return false, nil
		}
		if b.dequeued == nil {
			b.dequeued = make(chan struct{})
		}
		ch := b.dequeued
		wasBlocked := b.blocked.Swap(true) // under qmu: unreserve clears it under qmu
		b.qmu.Unlock()
		if !wasBlocked {
			b.signal() // write the tail now rather than at its deadline
		}
		select {
		case <-ch:
		case <-b.quit: // Close was called while the tail was full
			return false, ErrClosed
		}
		b.qmu.Lock()
	}
	b.queued += n
	b.queuedN++
	b.qmu.Unlock()
	return true, nil
}

// unreserve takes k records of n bytes off the tail and wakes the appends
// waiting.
func (b *Buffer) unreserve(n, k int) {
	if k == 0 {
		return
	}
	b.qmu.Lock()
	b.queued -= n
	b.queuedN -= k
	if b.dequeued != nil {
		close(b.dequeued)
		b.dequeued = nil
		b.blocked.Store(false)
	}
	b.qmu.Unlock()
}

// popLocked takes the tail's durable prefix off it, onto the fire queue,
// in order. b.mu is held; settle then runs their callbacks.
func (b *Buffer) popLocked() {
	b.fireQ, _ = b.tl.popDurable(b.fireQ)
}

// settle runs the callbacks of the fire queue, in order, and takes their
// records off the tail's bounds. One caller at a time runs callbacks: a
// caller that finds another at it (a callback that releases, say) leaves
// its records to that one, which looks again before it returns.
func (b *Buffer) settle() {
	for b.fireMu.TryLock() {
		b.mu.Lock()
		if b.holdFire {
			// The path lost the file the records were written to (see
			// checkPath): not durable until it is back.
			b.mu.Unlock()
			b.fireMu.Unlock()
			return
		}
		fire := b.fireQ
		b.fireQ = b.fireBuf[:0]
		b.mu.Unlock()
		size := 0
		for i := range fire {
			e := &fire[i]
			size += len(e.val)
			if e.done != nil {
				if e.state == failed {
					e.done(0, e.err)
				} else {
					e.done(e.seq, nil)
				}
			}
		}
		b.unreserve(size, len(fire))
		clear(fire)
		b.fireBuf = fire[:0]
		b.fireMu.Unlock()
		b.mu.Lock()
		more := len(b.fireQ) > 0
		b.mu.Unlock()
		if !more {
			return
		}
	}
}

// notifyLocked wakes the readers waiting for records to come or go. b.mu
// is held.
func (b *Buffer) notifyLocked() {
	if b.waiting {
		close(b.changed)
		b.changed = make(chan struct{})
		b.waiting = false
	}
}

// AppendWait appends rec and waits until it is durable.
func (b *Buffer) AppendWait(ctx context.Context, rec *Record) (uint64, error) {
	type result struct {
		seq uint64
		err error
	}
	ch := make(chan result, 1)
	if err := b.Append(rec, func(seq uint64, err error) { ch <- result{seq, err} }); err != nil {
		return 0, err
	}
	select {
	case r := <-ch:
		return r.seq, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// flush waits until everything requested before it (appends, releases,
// dead letters) is committed: the tail is written, whatever the write
// delay (with Block at MaxBytes, as far as the room goes).
func (b *Buffer) flush(ctx context.Context) error {
	return b.deadLetterOp(ctx, nil)
}
