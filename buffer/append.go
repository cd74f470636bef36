package buffer

import "context"

// appendReq is one queued append: an encoded record and its callback. A
// nil val is a flush barrier (see flush).
type appendReq struct {
	val  []byte
	done func(seq uint64, err error)
}

// Append queues rec for the next commit and returns without waiting for it.
// done is called exactly once, from the committer, after the commit: with the
// record's sequence number and a nil error once it is durable, or with the
// commit's error. Callbacks run in append order and must not block. Append
// blocks while the queue is full (and, with Block, while the buffer is
// full), and fails with ErrClosed after Close. rec is encoded before Append
// returns; the caller may reuse it.
func (b *Buffer) Append(rec *Record, done func(seq uint64, err error)) error {
	val := appendEncoded(make([]byte, 0, 64+len(rec.Topic)+len(rec.Payload)), rec)
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	if err := b.reserve(len(val)); err != nil {
		return err
	}
	select {
	case b.reqs <- appendReq{val: val, done: done}:
		return nil
	case <-b.quit: // Close was called while the queue was full
		b.unreserve(len(val))
		return ErrClosed
	}
}

// reserve waits until n more bytes fit in QueueBytes (or none are queued)
// and counts them as queued.
func (b *Buffer) reserve(n int) error {
	b.qmu.Lock()
	for b.queued > 0 && b.queued+n > b.opts.QueueBytes {
		if b.dequeued == nil {
			b.dequeued = make(chan struct{})
		}
		ch := b.dequeued
		b.qmu.Unlock()
		select {
		case <-ch:
		case <-b.quit: // Close was called while the queue was full
			return ErrClosed
		}
		b.qmu.Lock()
	}
	b.queued += n
	b.qmu.Unlock()
	return nil
}

// unreserve takes n bytes off the queue and wakes the appends waiting.
func (b *Buffer) unreserve(n int) {
	if n == 0 {
		return
	}
	b.qmu.Lock()
	b.queued -= n
	if b.dequeued != nil {
		close(b.dequeued)
		b.dequeued = nil
	}
	b.qmu.Unlock()
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
// dead letters) is committed.
func (b *Buffer) flush(ctx context.Context) error {
	ch := make(chan error, 1)
	b.closeMu.RLock()
	if b.closed {
		b.closeMu.RUnlock()
		return ErrClosed
	}
	b.reqs <- appendReq{done: func(_ uint64, err error) { ch <- err }}
	b.closeMu.RUnlock()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
