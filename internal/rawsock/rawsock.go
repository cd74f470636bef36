// Package rawsock gives a TCP connection whose reads and writes are raw
// system calls on its socket, each one non-blocking (MSG_DONTWAIT), waiting
// in Go's network poller as net does when the socket is not ready.
//
// Why: Go enters a system call through the scheduler (entersyscall), which
// wakes the runtime's monitor thread (sysmon) out of its sleep whenever
// the process was idle, and the monitor then polls every 20 µs while the
// process works, and hands the P to another thread when a call takes
// longer than that. At the rates a gateway runs (bursts of work every few
// milliseconds, each with a few socket calls) that cost a third of ferry's
// CPU. A non-blocking call never blocks, so it may be a raw call, which
// the scheduler does not see: the monitor sleeps on. (syscall.RawSyscall's
// contract: only for calls known not to block; MSG_DONTWAIT makes each
// call so whatever the socket's flags.)
//
// The connection is a net.Conn: reads and writes may run at once, and
// several of either (they are serialized per direction); deadlines, Close
// and the errors are net's. Under the race detector the calls go through
// the syscall package instead (whose Read and Write tell the detector that
// a socket orders the goroutines on its two ends), and on other systems
// than Linux Wrap returns the connection as it is.
package rawsock
