//go:build !linux

package mqtt

import "net"

// lowat is Linux's (see lowat_linux.go); elsewhere reads are plain.
type lowat struct{}

func newLowat(net.Conn) *lowat { return nil }

func (*lowat) raise() {}

func (*lowat) read(c net.Conn, p []byte) (int, error) { return c.Read(p) }
