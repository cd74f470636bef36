//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package buffer

import bolt "go.etcd.io/bbolt"

// readahead does nothing where madvise is not at hand.
func readahead(*bolt.Tx, []byte, int) {}

// unmapPages does nothing where madvise is not at hand.
func unmapPages(*bolt.Tx) {}
