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
// 10 ms and polls the network while every processor is busy. It does
// them whenever it is awake, and anything else that enters a system call
// (a file, the garbage collector's stop) wakes it. So that a busy spell
// fed only by raw sockets cannot leave it asleep for long, one call in
// every cookedEvery goes the standard way (cooked).
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
type Conn struct {
	net.Conn
	rc syscall.RawConn

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
	switch t := c.(type) {
	case *net.TCPConn:
		sc = t
	case *net.UnixConn:
		sc = t
	default:
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	w := &Conn{Conn: c, rc: rc}
	w.rfn = w.read
	w.wfn = w.write
	return w
}

// cookedEvery is how often, at most, a call goes the standard way and so
// wakes the runtime's monitor if it sleeps. The monitor's sleep is
// bounded by the next timer too (the journal writer's linger while
// events flow, the scheduler's poll), and with two processors one
// goroutine that runs on cannot hold up the others: this is the
// backstop. At 20 ms (one event in ten at 500 events/s) the monitor's
// own context switches were ten times those without it, about 0.5 per
// event; at 100 ms they are a fifth of that.
var cookedEvery = 100 * time.Millisecond

var (
	epoch      = time.Now()
	lastCooked atomic.Int64 // time.Since(epoch) at the last cooked call
)

// cooked reports whether this call is the one in cookedEvery to go the
// standard way.
func cooked() bool {
	now := int64(time.Since(epoch))
	last := lastCooked.Load()
	return now-last >= int64(cookedEvery) && lastCooked.CompareAndSwap(last, now)
}

// Read reads into p as net.Conn's Read does.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if cooked() {
		return c.Conn.Read(p)
	}
	c.rmu.Lock()
	c.rbuf, c.rn, c.rerr = p, 0, nil
	err := c.rc.Read(c.rfn)
	n, rerr := c.rn, c.rerr
	c.rbuf, c.rerr = nil, nil
	c.rmu.Unlock()
	if err != nil {
		return 0, opError("read", c.Conn, unwrapOp(err))
	}
	if rerr == io.EOF {
		return n, io.EOF
	}
	if rerr != nil {
		return n, opError("read", c.Conn, rerr)
	}
	return n, nil
}

func (c *Conn) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)))
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

// Write writes all of p as net.Conn's Write does.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if cooked() {
		return c.Conn.Write(p)
	}
	c.wmu.Lock()
	c.wbuf, c.wn, c.werr = p, 0, nil
	err := c.rc.Write(c.wfn)
	n, werr := c.wn, c.werr
	c.wbuf, c.werr = nil, nil
	c.wmu.Unlock()
	if err != nil {
		return n, opError("write", c.Conn, unwrapOp(err))
	}
	if werr != nil {
		return n, opError("write", c.Conn, werr)
	}
	return n, nil
}

func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		rest := c.wbuf[c.wn:]
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
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
func opError(op string, c net.Conn, err error) error {
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Peek looks at what the socket fd holds, up to len(b) bytes, without
// taking it and without waiting: recv(2) with MSG_PEEK|MSG_DONTWAIT, made
// as Conn's reads are. n 0 with a nil error is the peer's close;
// syscall.EAGAIN is nothing there yet.
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
