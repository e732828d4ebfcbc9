//go:build linux

package rawsock

import (
	"os"
	"syscall"
	"unsafe"
)

// Bell wakes one goroutine through the network poller.
//
// Why: a goroutine readied by another (a channel send, a mutex) while a
// processor is idle makes the Go runtime wake a thread for it (wakep),
// which spins looking for work and parks again; in a process fed one
// event at a time that is a futex wake, a spin and a park per hand-over
// (BENCHMARKS.md, issue 17). A goroutine readied by the network poller is
// run by the thread that finds it, when the goroutine that rang goes to
// sleep and its thread looks for work: no other thread wakes.
//
// A Bell is an eventfd. Ring adds one to its counter; Wait waits in the
// poller until the counter is not zero and resets it, so rings before a
// Wait make it return at once, and several make it return once. One
// goroutine at a time may Wait; any may Ring.
type Bell struct {
	f   *os.File
	rc  syscall.RawConn
	one [8]byte
	got [8]byte
	rfn func(fd uintptr) bool
	wfn func(fd uintptr) bool
}

// NewBell returns a bell, or nil if the system cannot make one (the
// caller waits the standard way).
func NewBell() *Bell {
	fd, _, e := syscall.RawSyscall(syscall.SYS_EVENTFD2, 0, syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if e != 0 {
		return nil
	}
	f := os.NewFile(fd, "bell") // non-blocking: the poller serves it
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil
	}
	b := &Bell{f: f, rc: rc}
	*(*uint64)(unsafe.Pointer(&b.one)) = 1 // native endian, as eventfd reads it
	b.rfn, b.wfn = b.read, b.write
	return b
}

// Ring wakes the goroutine waiting, or the next to wait.
func (b *Bell) Ring() error { return b.rc.Write(b.wfn) }

// Wait waits for a ring; an error means the bell is closed.
func (b *Bell) Wait() error { return b.rc.Read(b.rfn) }

// Close releases the bell; nobody may Ring or Wait after it.
func (b *Bell) Close() error { return b.f.Close() }

func (b *Bell) write(fd uintptr) bool {
	// Only a counter at its maximum (2^64-2 rings unread) refuses a
	// write: a ring then is not needed.
	_, _ = rawWrite(fd, b.one[:])
	return true
}

func (b *Bell) read(fd uintptr) bool {
	_, e := rawRead(fd, b.got[:])
	return e != syscall.EAGAIN
}
