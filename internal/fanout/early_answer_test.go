package fanout

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestEarlyAnswerToALargeBody: a receiver that answers 413 to a body over
// its limit and closes without reading the rest (Go's server with
// http.MaxBytesReader) has its 413 recorded, as net/http reports it. It
// was recorded as a broken pipe (class connect, no status) from 8 MB on
// loopback, so a definitive 4xx was retried through the whole schedule
// (found by a review, 2026-12-06).
func TestEarlyAnswerToALargeBody(t *testing.T) {
	srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
		}
	}), false, false)
	r := testRequest(srv.URL)
	r.body = bytes.Repeat([]byte("x"), 32<<20)
	res := post(context.Background(), openClient(5*time.Second, nil), r, 5*time.Second, faultLimit)
	if res.Status != http.StatusRequestEntityTooLarge || !strings.Contains(string(res.Body), "too large") {
		t.Fatalf("status %d, class %q, error %q, body %q; want the receiver's 413", res.Status, res.ErrorClass, res.Error, res.Body)
	}
}

// TestEarlyAnswerWithTheBodyUnread: a receiver that answers 401 after the
// request's head and never reads the body (nor closes) has its 401
// recorded once the write gives up at the deadline, not a timeout.
func TestEarlyAnswerWithTheBodyUnread(t *testing.T) {
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	url := rawPeer(t, func(c *net.TCPConn) {
		defer c.Close()
		buf := make([]byte, 4096)
		if _, err := c.Read(buf); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n\r\nbad signature")
		<-done
	})
	r := testRequest(url)
	r.body = bytes.Repeat([]byte("x"), 32<<20)
	res := post(context.Background(), openClient(time.Second, nil), r, time.Second, faultLimit)
	if res.Status != http.StatusUnauthorized {
		t.Fatalf("status %d, class %q, error %q; want the receiver's 401", res.Status, res.ErrorClass, res.Error)
	}
	if res.Duration > time.Second+time.Second/2 {
		t.Errorf("the attempt took %s with a 1 s timeout", res.Duration)
	}
}
