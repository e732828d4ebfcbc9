package rawsock

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pair returns the two ends of a connected socket of network ("tcp" or
// "unix"), the client's end dialled with the standard library.
func pair(t *testing.T, network string) (client, server net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// both runs f on a plain socket and on the same kind of socket wrapped,
// for each network, and returns what each reported, so a test can hold
// the wrapped socket to the plain one's behaviour.
func both(t *testing.T, f func(t *testing.T, c, peer net.Conn) string) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			c, peer := pair(t, network)
			want := f(t, c, peer)
			c, peer = pair(t, network)
			w := wrap(c)
			if _, ok := w.(*Conn); !ok {
				t.Fatalf("wrap(%T) = %T, want *Conn", c, w)
			}
			got := f(t, w, peer)
			if scrub(got) != scrub(want) {
				t.Errorf("wrapped socket reported\n  %s\nplain socket\n  %s", got, want)
			}
		})
	}
}

// scrub drops addresses, which differ from one socket to the next.
func scrub(s string) string {
	var b strings.Builder
	for _, f := range strings.Fields(s) {
		if strings.Contains(f, "127.0.0.1:") || strings.Contains(f, string(filepath.Separator)) {
			f = "ADDR"
		}
		b.WriteString(f + " ")
	}
	return b.String()
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	var ne net.Error
	timeout := errors.As(err, &ne) && ne.Timeout()
	return err.Error() + " timeout=" + boolString(timeout) +
		" deadline=" + boolString(errors.Is(err, os.ErrDeadlineExceeded)) +
		" closed=" + boolString(errors.Is(err, net.ErrClosed)) +
		" eof=" + boolString(err == io.EOF)
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// TestLargeWriteAndRead sends 4 MiB each way: the writes outgrow the
// socket's buffer (EAGAIN, then a wait for room), and the bytes arrive
// whole and in order.
func TestLargeWriteAndRead(t *testing.T) {
	both(t, func(t *testing.T, c, peer net.Conn) string {
		data := make([]byte, 4<<20)
		for i := range data {
			data[i] = byte(i * 7)
		}
		echoed := make(chan error, 1)
		go func() { // the peer echoes what it reads, slowly at first
			buf := make([]byte, 64<<10)
			time.Sleep(20 * time.Millisecond)
			_, err := io.CopyBuffer(peer, io.LimitReader(peer, int64(len(data))), buf)
			echoed <- err
		}()
		wrote := make(chan error, 1)
		go func() {
			n, err := c.Write(data)
			if err == nil && n != len(data) {
				err = io.ErrShortWrite
			}
			wrote <- err
		}()
		got := make([]byte, 0, len(data))
		buf := make([]byte, 10_000)
		for len(got) < len(data) {
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				t.Fatalf("read after %d bytes: %v", len(got), err)
			}
		}
		if err := <-wrote; err != nil {
			t.Fatalf("write: %v", err)
		}
		if err := <-echoed; err != nil {
			t.Fatalf("echo: %v", err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("the bytes read back are not the bytes written")
		}
		n, err := c.Write(nil)
		return "empty write " + string(rune('0'+n)) + " " + errString(err)
	})
}

func TestReadDeadline(t *testing.T) {
	both(t, func(t *testing.T, c, peer net.Conn) string {
		if err := c.SetReadDeadline(time.Now().Add(30 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		n, err := c.Read(make([]byte, 10))
		if err == nil || time.Since(start) > 5*time.Second {
			t.Fatalf("read returned %d, %v after %v; want a timeout at the deadline", n, err, time.Since(start))
		}
		// The deadline lifted, the socket reads again.
		if err := c.SetReadDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
		if _, err := peer.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if n, err2 := c.Read(make([]byte, 10)); n != 1 || err2 != nil {
			t.Fatalf("read after the deadline was lifted: %d, %v", n, err2)
		}
		return errString(err)
	})
}

func TestWriteDeadline(t *testing.T) {
	both(t, func(t *testing.T, c, _ net.Conn) string {
		if err := c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		n, err := c.Write(make([]byte, 64<<20)) // the peer never reads
		if err == nil || n >= 64<<20 {
			t.Fatalf("write returned %d, %v; want a timeout with part written", n, err)
		}
		return errString(err)
	})
}

func TestPeerCloses(t *testing.T) {
	both(t, func(t *testing.T, c, peer net.Conn) string {
		if _, err := peer.Write([]byte("bye")); err != nil {
			t.Fatal(err)
		}
		peer.Close()
		got, err := io.ReadAll(c)
		if string(got) != "bye" {
			t.Fatalf("read %q, want %q", got, "bye")
		}
		n, err2 := c.Read(make([]byte, 4))
		return errString(err) + " then " + string(rune('0'+n)) + " " + errString(err2)
	})
}

// TestPeerResets: reads and then writes on a connection the peer reset.
func TestPeerResets(t *testing.T) {
	var got [2]string
	for i, c := range tcpPair(t) {
		_, peer := c[0], c[1]
		if _, err := c[0].Write([]byte("unread")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
		_ = peer.(*net.TCPConn).SetLinger(0)
		peer.Close() // unread data and linger 0: the peer sends a reset
		deadline := time.Now().Add(5 * time.Second)
		var rerr, werr error
		for rerr == nil && time.Now().Before(deadline) {
			_, rerr = c[0].Read(make([]byte, 10))
		}
		for werr == nil && time.Now().Before(deadline) {
			_, werr = c[0].Write([]byte("more"))
		}
		if !errors.Is(rerr, syscall.ECONNRESET) {
			t.Errorf("read after a reset: %v, want ECONNRESET", rerr)
		}
		got[i] = errString(rerr) + " / " + errString(werr) + " epipe=" + boolString(errors.Is(werr, syscall.EPIPE))
	}
	if scrub(got[0]) != scrub(got[1]) {
		t.Errorf("wrapped socket reported\n  %s\nplain socket\n  %s", got[1], got[0])
	}
}

// tcpPair returns a plain and a wrapped TCP connection, each with its
// peer.
func tcpPair(t *testing.T) [2][2]net.Conn {
	a, pa := pair(t, "tcp")
	b, pb := pair(t, "tcp")
	return [2][2]net.Conn{{a, pa}, {wrap(b), pb}}
}

// TestZeroLength: reads and writes of nothing make the checks net makes
// (closed, deadline passed).
func TestZeroLength(t *testing.T) {
	both(t, func(t *testing.T, c, _ net.Conn) string {
		n1, e1 := c.Read(nil)
		n2, e2 := c.Write(nil)
		_ = c.SetDeadline(time.Unix(1, 0))
		_, e3 := c.Read(nil)
		_, e4 := c.Write(nil)
		c.Close()
		_, e5 := c.Read(nil)
		_, e6 := c.Write(nil)
		return fmt.Sprint(n1, " ", errString(e1), " / ", n2, " ", errString(e2), " / ", errString(e3), " / ", errString(e4),
			" / ", errString(e5), " / ", errString(e6))
	})
}

// TestConcurrentReads: eight goroutines read one socket; every byte is
// read once.
func TestConcurrentReads(t *testing.T) {
	both(t, func(t *testing.T, c, peer net.Conn) string {
		var wg sync.WaitGroup
		total := make(chan int, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n, buf := 0, make([]byte, 7)
				for {
					m, err := c.Read(buf)
					n += m
					if err != nil {
						break
					}
				}
				total <- n
			}()
		}
		data := make([]byte, 1<<20)
		if _, err := peer.Write(data); err != nil {
			t.Fatal(err)
		}
		peer.Close()
		wg.Wait()
		close(total)
		sum := 0
		for n := range total {
			sum += n
		}
		if sum != len(data) {
			t.Fatalf("read %d bytes in all, want %d", sum, len(data))
		}
		return "ok"
	})
}

func TestClosedConn(t *testing.T) {
	both(t, func(t *testing.T, c, _ net.Conn) string {
		c.Close()
		_, rerr := c.Read(make([]byte, 1))
		_, werr := c.Write([]byte("x"))
		return errString(rerr) + " / " + errString(werr)
	})
}

// TestCloseWakesReader: a Close from another goroutine ends a read that
// waits, as it does on a plain socket.
func TestCloseWakesReader(t *testing.T) {
	both(t, func(t *testing.T, c, _ net.Conn) string {
		done := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 1))
			done <- err
		}()
		time.Sleep(20 * time.Millisecond)
		c.Close()
		select {
		case err := <-done:
			return errString(err)
		case <-time.After(5 * time.Second):
			t.Fatal("a read waiting on a closed socket did not return")
			return ""
		}
	})
}

// TestPingPong reads and writes from two goroutines at once.
func TestPingPong(t *testing.T) {
	both(t, func(t *testing.T, c, peer net.Conn) string {
		const rounds = 2000
		go func() {
			buf := make([]byte, 8)
			for i := 0; i < rounds; i++ {
				if _, err := io.ReadFull(peer, buf); err != nil {
					return
				}
				if _, err := peer.Write(buf); err != nil {
					return
				}
			}
		}()
		errc := make(chan error, 1)
		go func() {
			for i := 0; i < rounds; i++ {
				if _, err := c.Write([]byte{byte(i), 1, 2, 3, 4, 5, 6, 7}); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		buf := make([]byte, 8)
		for i := 0; i < rounds; i++ {
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			if buf[0] != byte(i) {
				t.Fatalf("round %d: got %d", i, buf[0])
			}
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		return "ok"
	})
}

func TestPeek(t *testing.T) {
	c, peer := pair(t, "tcp")
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	peek := func() (string, error) {
		var n int
		var perr error
		buf := make([]byte, 16)
		if err := rc.Read(func(fd uintptr) bool { n, perr = Peek(fd, buf); return true }); err != nil {
			t.Fatal(err)
		}
		return string(buf[:n]), perr
	}
	if got, err := peek(); got != "" || err != syscall.EAGAIN {
		t.Fatalf("empty socket: peek = %q, %v; want EAGAIN", got, err)
	}
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	got, err := peek()
	for got == "" && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		got, err = peek()
	}
	if got != "hello" || err != nil {
		t.Fatalf("peek = %q, %v; want hello", got, err)
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if string(buf[:n]) != "hello" || err != nil {
		t.Fatalf("the read after a peek got %q, %v: the peek took the bytes", buf[:n], err)
	}
	peer.Close()
	got, err = peek()
	for err == syscall.EAGAIN && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		got, err = peek()
	}
	if got != "" || err != nil {
		t.Fatalf("closed peer: peek = %q, %v; want 0 bytes, no error", got, err)
	}
}

// TestWrapLeavesOthers: a net.Conn that is not a TCP or Unix socket
// (here an in-memory pipe) is returned as it is.
func TestWrapLeavesOthers(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if w := wrap(a); w != a {
		t.Fatalf("wrap(net.Pipe) = %T, want the pipe itself", w)
	}
	// A datagram socket: a read of nothing is an empty datagram there.
	dg, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "dg"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer dg.Close()
	if w := wrap(dg); w != net.Conn(dg) {
		t.Fatalf("wrap(unixgram) = %T, want the socket itself", w)
	}
	c, _ := pair(t, "tcp")
	w := wrap(c)
	if _, ok := w.(syscall.Conn); !ok {
		t.Fatal("a wrapped socket has lost SyscallConn")
	}
	if w.LocalAddr().String() != c.LocalAddr().String() {
		t.Fatal("a wrapped socket has another address")
	}
}

// TestMonitorBackstop: on one processor, a goroutine that computes for
// 1.5 s after a raw read does not hold up another goroutine, whose data
// arrived meanwhile, for that long: the runtime's monitor wakes and
// preempts it. Two ways, one case each:
//   - after silence: the read is the first system call in 400 ms, made
//     the standard way (standard), which wakes the monitor;
//   - busy: a third socket gets a byte every 40 ms, so the backstop
//     timer stays pending and every call is raw; the monitor's sleep
//     ends at the timer.
//
// (With raw calls alone the other goroutine waited the whole 1.5 s.)
// Each case runs in a child process with GOMAXPROCS=1; a shell writes to
// the sockets on time, since nothing in the child can while it computes.
func TestMonitorBackstop(t *testing.T) {
	if c := os.Getenv("RAWSOCK_BACKSTOP_CHILD"); c != "" {
		backstopChild(t, c == "busy")
		return
	}
	if _, err := exec.LookPath("sh"); err != nil {
		t.Fatal("sh not found")
	}
	for _, c := range []string{"silence", "busy"} {
		t.Run(c, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestMonitorBackstop$", "-test.count=1")
			cmd.Env = append(os.Environ(), "RAWSOCK_BACKSTOP_CHILD="+c, "GOMAXPROCS=1")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			var waited, computed time.Duration
			var armedThen bool
			for _, line := range strings.Split(string(out), "\n") {
				if _, err := fmt.Sscanf(strings.TrimSpace(line), "backstop %d %d %t", &waited, &computed, &armedThen); err == nil {
					break
				}
			}
			if computed == 0 {
				t.Fatalf("child printed no result:\n%s", out)
			}
			t.Logf("data read %v after it arrived; the computing goroutine ran %v; timer pending before its read: %v", waited, computed, armedThen)
			if armedThen != (c == "busy") {
				t.Fatalf("%s: timer pending when the computing goroutine's data arrived: %v; the case tests the other way", c, armedThen)
			}
			if waited > 800*time.Millisecond {
				t.Errorf("the reader waited %v for data that had arrived, behind a goroutine computing for %v: the monitor slept", waited, computed)
			}
		})
	}
}

func backstopChild(t *testing.T, busy bool) {
	a, pa := pair(t, "tcp")
	b, pb := pair(t, "tcp")
	k, pk := pair(t, "tcp")
	a, b, k = wrap(a), wrap(b), wrap(k)
	var files []*os.File
	for _, p := range []net.Conn{pa, pb, pk} {
		f, err := p.(*net.TCPConn).File()
		if err != nil {
			t.Fatal(err)
		}
		p.Close()
		files = append(files, f)
	}
	// 'a' at 400 ms (the timer armed by the first reads is gone by 200 ms)
	// wakes the goroutine that computes; 'b' 50 ms later is for the other
	// one. Busy: 'k' every 40 ms from the start.
	script := "sleep 0.4; printf a >&3; sleep 0.05; printf b >&4; sleep 5"
	if busy {
		script = "(i=0; while [ $i -lt 60 ]; do printf k >&5; sleep 0.04; i=$((i+1)); done) & " + script
	}
	sh := exec.Command("sh", "-c", script)
	sh.ExtraFiles = files
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	defer sh.Process.Kill()
	go func() {
		buf := make([]byte, 1)
		for {
			if _, err := k.Read(buf); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	computed := make(chan time.Duration, 1)
	var armedThen bool
	go func() {
		var buf [1]byte
		// Wait for 'a' in the poller first, so that the read that takes
		// it is the first call after the wait.
		waited := false
		_ = a.(*Conn).rc.Read(func(uintptr) bool {
			if !waited { // nothing there yet: wait for it
				waited = true
				return false
			}
			armedThen = armed.Load()
			return true
		})
		if _, err := a.Read(buf[:]); err != nil {
			computed <- 0
			return
		}
		began := time.Now()
		spin(1500 * time.Millisecond)
		computed <- time.Since(began)
	}()
	got := make(chan time.Duration, 1)
	go func() {
		_, _ = b.Read(make([]byte, 1))
		got <- time.Since(start)
	}()
	at := <-got
	fmt.Printf("backstop %d %d %t\n", max(at-450*time.Millisecond, 0), <-computed, armedThen)
}

// spin computes for d without a system call or an allocation (the clock
// is the vDSO's), so only the monitor can preempt it.
//
//go:noinline
func spin(d time.Duration) int {
	start, x := time.Now(), 0
	for time.Since(start) < d {
		for i := range 1000 {
			x += i
		}
	}
	return x
}
