//go:build linux || darwin || freebsd || netbsd || openbsd

package buffer

import (
	"os"
	"unsafe"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// readahead asks the kernel to start reading the n bytes of the file from
// v on, v being a value in tx's memory map. bbolt maps its file with
// MADV_RANDOM, right for a B+tree's point lookups, which turns the
// kernel's own readahead off; but a drain goes through the head's batches
// in order, and they lie in the file in about that order. Without this,
// each page of a backlog that is not in memory (after a reboot, or on a
// board with less RAM than its buffer) is a separate synchronous read.
func readahead(tx *bolt.Tx, v []byte, n int) {
	if len(v) == 0 {
		return
	}
	p := unsafe.Pointer(unsafe.SliceData(v))
	base := tx.DB().Info().Data
	end := base + uintptr(tx.Size())
	if uintptr(p) < base || uintptr(p) >= end { // not in the map (a value written by this transaction)
		return
	}
	skew := (uintptr(p) - base) % uintptr(os.Getpagesize()) // the map starts on a page boundary
	n = int(min(uintptr(n), end-uintptr(p)+skew))
	unix.Madvise(unsafe.Slice((*byte)(unsafe.Add(p, -int(skew))), n), unix.MADV_WILLNEED) // advice only: an error changes nothing
}

// unmapPages drops the process's mappings of tx's file pages
// (MADV_DONTNEED). The pages stay in the page cache: the next access maps
// them again from there, at the cost of a minor fault. bbolt reads through
// its memory map, so without this every page a drain or a commit touched
// would count in ferry's resident memory until the kernel runs short: a
// 300 MB backlog drained would show as 300 MB more RSS. tx holds the map
// in place (a read transaction holds bbolt's map lock; a write
// transaction is the only one that remaps).
func unmapPages(tx *bolt.Tx) {
	if base := tx.DB().Info().Data; base != 0 {
		unix.Syscall(unix.SYS_MADVISE, base, uintptr(tx.Size()), unix.MADV_DONTNEED) // advice only: an error changes nothing
	}
}
