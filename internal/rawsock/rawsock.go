// Package rawsock reads and writes a socket without telling the Go
// scheduler it is in a system call.
//
// Why: net.Conn's Read and Write go through syscall.Syscall, whose entry
// (runtime.entersyscall) wakes the runtime's monitor thread (sysmon) when
// it sleeps because every processor was idle. Woken that way, the monitor
// polls every 20 µs until the process is idle again. A process fed one
// event at a time (a helpdesk's day: an event every few milliseconds)
// goes idle between every two events, so each event paid a futex wake
// and a handful of the monitor's polls: about 40% of the context
// switches per event at 500 tx/s (BENCHMARKS.md, issue 17).
//
// The socket is non-blocking (Go's network poller made it so), so a
// read or write returns at once: it has no need of the scheduler's
// syscall protocol, whose purpose is to hand the processor to another
// thread while a call blocks. Conn makes the call with syscall.RawSyscall
// inside syscall.RawConn's Read and Write, which wait for readiness in
// the network poller and keep the connection's deadlines.
//
// The monitor has other duties: it preempts a goroutine that ran for
// 10 ms, and polls the network while every processor is busy. It does
// them whenever it is awake; asleep, it wakes at the timer that was next
// when it fell asleep, or when anything enters a system call (a file,
// the garbage collector's stop). So that a busy spell fed only by raw
// sockets cannot leave it asleep for long (one goroutine computing on
// the only processor would hold up every other until it blocked), Conn
// keeps it near, at no cost per event while events flow:
//   - while sockets are in use, a timer is kept pending at most backstop
//     ahead: the monitor, asleep between two events, wakes within
//     backstop even if no call is made meanwhile;
//   - the first system call after backstop of silence, when no timer
//     is pending, is made the standard way: the spell that starts after
//     an idle one has the monitor awake.
package rawsock

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Conn is a TCP or Unix socket whose Read and Write do not enter the
// scheduler's system call protocol. Everything else is the socket's.
//
// It hides *net.TCPConn's other methods (CloseWrite, SetNoDelay,
// ReadFrom...): io.Copy takes its generic path. Nothing of dzhook's uses
// them on a dialled connection.
type Conn struct {
	net.Conn
	rc      syscall.RawConn
	network string // "tcp" or "unix", for errors

	rmu  sync.Mutex // the read state below: concurrent Reads take turns
	rbuf []byte
	rn   int
	rerr error
	rfn  func(fd uintptr) bool

	wmu  sync.Mutex
	wbuf []byte
	wn   int
	werr error
	wfn  func(fd uintptr) bool
}

// Wrap returns c as a Conn when it is a socket of the kinds the network
// poller serves (TCP, Unix); any other net.Conn is returned as it is.
func Wrap(c net.Conn) net.Conn {
	if !enabled {
		return c
	}
	return wrap(c)
}

func wrap(c net.Conn) net.Conn {
	var sc syscall.Conn
	network := "tcp"
	switch t := c.(type) {
	case *net.TCPConn:
		sc = t
	case *net.UnixConn:
		// Stream sockets only: on a datagram socket a read of nothing
		// is an empty datagram, not the end.
		if a, ok := t.LocalAddr().(*net.UnixAddr); !ok || a == nil || a.Net != "unix" {
			return c
		}
		sc, network = t, "unix"
	default:
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	w := &Conn{Conn: c, rc: rc, network: network}
	w.rfn = w.read
	w.wfn = w.write
	return w
}

// backstop bounds how long the runtime's monitor sleeps while raw calls
// alone feed the process. (A scratch test: with a goroutine computing on
// the only processor, another one waited 1.8 s for data that had
// arrived, against 0.4 s with standard calls; TestMonitorBackstop.)
const backstop = 100 * time.Millisecond

var (
	armed      atomic.Bool // the timer is pending
	used       atomic.Bool // a system call since the timer was armed
	backstopMu sync.Mutex
	backstopT  *time.Timer
)

// standard is called before each system call on a socket, and reports
// whether it is to be made the standard way: the first after backstop
// of silence. It keeps the timer pending while calls are made.
func standard() bool {
	if !used.Load() {
		used.Store(true)
	}
	if armed.Load() || !armed.CompareAndSwap(false, true) {
		return false
	}
	used.Store(false)
	backstopMu.Lock()
	if backstopT == nil {
		backstopT = time.AfterFunc(backstop, expire)
	} else {
		backstopT.Reset(backstop)
	}
	backstopMu.Unlock()
	return true
}

// expire is the timer's: pending again if a call was made since it was
// armed, else gone until the next call.
func expire() {
	if !used.Swap(false) {
		armed.Store(false)
		if !used.Load() || !armed.CompareAndSwap(false, true) {
			return
		}
		// a call between the two looks saw the timer still pending
	}
	backstopMu.Lock()
	backstopT.Reset(backstop)
	backstopMu.Unlock()
}

// Read reads into p as net.Conn's Read does.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return c.Conn.Read(p) // the checks (closed, deadline) net makes
	}
	c.rmu.Lock()
	c.rbuf, c.rn, c.rerr = p, 0, nil
	err := c.rc.Read(c.rfn)
	n, rerr := c.rn, c.rerr
	c.rbuf, c.rerr = nil, nil
	c.rmu.Unlock()
	if err != nil {
		return 0, c.opError("read", unwrapOp(err))
	}
	if rerr == io.EOF {
		return n, io.EOF
	}
	if rerr != nil {
		return n, c.opError("read", rerr)
	}
	return n, nil
}

func (c *Conn) read(fd uintptr) bool {
	for {
		n, e := rawRead(fd, c.rbuf)
		switch e {
		case 0:
			if n == 0 {
				c.rerr = io.EOF
			}
			c.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			c.rerr = e
			return true
		}
	}
}

// rawRead is read(2) on fd, made raw but when standard says otherwise.
func rawRead(fd uintptr, b []byte) (uintptr, syscall.Errno) {
	if standard() {
		n, err := syscall.Read(int(fd), b)
		return uintptr(max(n, 0)), errnoOf(err)
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return n, e
}

// rawWrite is write(2) on fd, as rawRead.
func rawWrite(fd uintptr, b []byte) (uintptr, syscall.Errno) {
	if standard() {
		n, err := syscall.Write(int(fd), b)
		return uintptr(max(n, 0)), errnoOf(err)
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return n, e
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EIO // syscall.Read and Write return only Errno
}

// Write writes all of p as net.Conn's Write does.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return c.Conn.Write(p)
	}
	c.wmu.Lock()
	c.wbuf, c.wn, c.werr = p, 0, nil
	err := c.rc.Write(c.wfn)
	n, werr := c.wn, c.werr
	c.wbuf, c.werr = nil, nil
	c.wmu.Unlock()
	if err != nil {
		return n, c.opError("write", unwrapOp(err))
	}
	if werr != nil {
		return n, c.opError("write", werr)
	}
	return n, nil
}

func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		n, e := rawWrite(fd, c.wbuf[c.wn:])
		switch e {
		case 0:
			c.wn += int(n)
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// SyscallConn is the socket's.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// SetDeadline, SetReadDeadline and SetWriteDeadline are the socket's;
// RawConn's Read and Write keep them.
func (c *Conn) SetDeadline(t time.Time) error      { return c.Conn.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.Conn.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(t) }

// unwrapOp takes the cause out of RawConn's "raw-read"/"raw-write"
// OpError, so the error reads as the socket's own would.
func unwrapOp(err error) error {
	if oe, ok := err.(*net.OpError); ok {
		return oe.Err
	}
	return err
}

// opError is the error net.Conn's Read or Write returns for err.
func (c *Conn) opError(op string, err error) error {
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: c.network, Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Peek looks at what the socket fd holds, up to len(b) bytes, without
// taking it and without waiting: recv(2) with MSG_PEEK|MSG_DONTWAIT, made
// raw always (it does not count for standard: the h1 transport peeks
// only right before it writes on the connection). n 0 with a nil error
// is the peer's close; syscall.EAGAIN is nothing there yet.
func Peek(fd uintptr, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		default:
			return 0, e
		}
	}
}

// Dialer returns dial with each socket it makes wrapped by Wrap.
func Dialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if dial == nil || !enabled {
		return dial
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return Wrap(c), nil
	}
}
