//go:build !linux

package rawsock

import "net"

// Wrap returns c: raw system calls are Linux's only.
func Wrap(c net.Conn) net.Conn { return c }
