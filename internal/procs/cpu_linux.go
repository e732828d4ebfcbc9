package procs

import (
	"syscall"
	"time"
	"unsafe"
)

// processCPU is the process's CPU time so far, every thread's. A raw
// call: the standard one would wake the runtime's monitor thread ten
// times a second, which internal/rawsock keeps asleep while the process
// is idle.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if _, _, e := syscall.RawSyscall(syscall.SYS_GETRUSAGE, uintptr(syscall.RUSAGE_SELF), uintptr(unsafe.Pointer(&ru)), 0); e != 0 {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
