package fanout

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
)

// synDropping is the address of a listening socket whose accept queue is
// full: it is never accepted from and has a backlog of 0, so once one
// connection waits in it Linux drops every further SYN, and a connection
// to it stays unanswered (no refusal, no reset) until the client gives up.
// The test is skipped if the kernel does not drop them (the check: a
// probe connection must time out).
func synDropping(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the queue until a connection goes unanswered: with a backlog
	// of 0 the first one fills it. The connections are kept open: a
	// closed one would leave the queue.
	for range 4 {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return addr
			}
			t.Fatalf("filling the accept queue of %s: %v", addr, err)
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skipf("connections to %s, whose accept queue is full, are still answered: this kernel does not drop their SYNs", addr)
	return ""
}

// TestTimeoutMessageConnecting: an attempt whose connection is never
// answered says that connecting to the receiver's host:port timed out,
// and that nothing was sent, not that the receiver did not answer.
func TestTimeoutMessageConnecting(t *testing.T) {
	addr := synDropping(t)
	res := attemptTo(openClient(faultTimeout, nil), withToken("http://"+addr))
	if want := "connecting to " + addr + " timed out (nothing was sent)"; res.ErrorClass != ClassTimeout || res.Error != want {
		t.Errorf("connection never answered: class %q, error %q; want class %q, error %q", res.ErrorClass, res.Error, ClassTimeout, want)
	}
	res = attemptTo(openClient(faultTimeout, nil), withToken("https://"+addr))
	if want := "connecting to " + addr + " timed out (nothing was sent)"; res.ErrorClass != ClassTimeout || res.Error != want {
		t.Errorf("https, connection never answered: class %q, error %q; want class %q, error %q", res.ErrorClass, res.Error, ClassTimeout, want)
	}
	// A name: connecting once it is resolved (localhost, from /etc/hosts;
	// its IPv4 address only, the one that does not answer).
	_, port, _ := net.SplitHostPort(addr)
	v4 := &net.Dialer{Resolver: &net.Resolver{PreferGo: true}}
	res = attemptTo(newClient(faultTimeout, 1, func(ctx context.Context, _, a string) (net.Conn, error) {
		return v4.DialContext(ctx, "tcp4", a)
	}, nil), withToken("http://localhost:"+port))
	if want := "connecting to localhost:" + port + " timed out (nothing was sent)"; res.ErrorClass != ClassTimeout || res.Error != want {
		t.Errorf("localhost, connection never answered: class %q, error %q; want class %q, error %q", res.ErrorClass, res.Error, ClassTimeout, want)
	}
	res = proxied(t, "http://"+addr, nil, nil, withToken("https://127.0.0.1:9"))
	if want := "connecting to proxy " + addr + " timed out (nothing was sent)"; res.ErrorClass != ClassTimeout || res.Error != want {
		t.Errorf("proxy's connection never answered: class %q, error %q; want class %q, error %q", res.ErrorClass, res.Error, ClassTimeout, want)
	}
}
