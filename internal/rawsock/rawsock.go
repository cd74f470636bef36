// Package rawsock gives a TCP connection whose reads and writes are raw
// system calls on its non-blocking socket, waiting in Go's network poller
// as net does when the socket is not ready.
//
// Why: Go enters a system call through the scheduler (entersyscall), which
// wakes the runtime's monitor thread (sysmon) out of its sleep whenever
// the process was idle, and the monitor then polls every 20 µs while the
// process works, and hands the P to another thread when a call takes
// longer than that. At the rates a gateway runs (bursts of work every few
// milliseconds, each with a few socket calls) that costs more CPU than the
// work itself. A read or write on a non-blocking socket never blocks, so it
// may be a raw call, which the scheduler does not see: the monitor sleeps
// on. (syscall.RawSyscall's contract: only for calls known not to block.)
//
// Deadlines, Close and errors behave as net.Conn's; only Linux gets raw
// calls, elsewhere Wrap returns the connection as it is.
package rawsock
