package agent

import (
	"os"

	"golang.org/x/sys/unix"
)

// clockSynced asks the kernel whether the system clock is synchronized
// (adjtimex, reading only). The packaged unit refuses adjtimex even to
// read (ProtectClock=yes, and @clock is outside its system call filter,
// which answers EPERM: SystemCallErrorNumber): then it asks
// systemd-timesyncd, which creates /run/systemd/timesync/synchronized at
// its first sync. Without either it cannot tell.
func clockSynced() (synced, known bool) {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err == nil {
		return state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0, true
	}
	if _, err := os.Stat("/run/systemd/timesync"); err != nil {
		return false, false
	}
	_, err = os.Stat("/run/systemd/timesync/synchronized")
	return err == nil, true
}
