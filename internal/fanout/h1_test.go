package fanout

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// The HTTP/1.1 transport's own behaviour (h1.go), against real peers on
// 127.0.0.1: keep-alive, receivers that close kept connections or send
// something unasked, answers that end their connection, 1xx, cancellation
// and the idle sweep. TestDeliveryFaults covers what an attempt records
// for each way a receiver breaks; its TLS cases the hand-over to HTTP/2.

// h1Peer serves HTTP/1.1 on a bare listener: serve is called for each
// request with its index on the connection (0 for the first), writes the
// answer, and says whether to read another request on that connection.
type h1Peer struct {
	url    string
	conns  atomic.Int64
	reqs   atomic.Int64
	closed chan struct{} // a value each time a connection ends
}

func newH1Peer(t *testing.T, serve func(c net.Conn, i int, req *http.Request) (more bool)) *h1Peer {
	t.Helper()
	p := &h1Peer{closed: make(chan struct{}, 100)}
	p.url = rawPeer(t, func(c *net.TCPConn) {
		defer func() {
			c.Close()
			p.closed <- struct{}{}
		}()
		p.conns.Add(1)
		br := bufio.NewReader(c)
		for i := 0; ; i++ {
			_ = c.SetReadDeadline(time.Now().Add(time.Minute))
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
			p.reqs.Add(1)
			if !serve(c, i, req) {
				return
			}
		}
	})
	return p
}

const okAnswer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

// answerWith writes s and keeps the connection.
func answerWith(s string) func(net.Conn, int, *http.Request) bool {
	return func(c net.Conn, _ int, _ *http.Request) bool {
		_, err := io.WriteString(c, s)
		return err == nil
	}
}

// testRequest is an attempt's request with a test body, as
// TestDeliveryFaults makes.
func testRequest(url string) request {
	return request{url: url, body: []byte(`{"id":"whk_1"}`), eventType: "request.created",
		eventID: "whk_1", deliveryID: "dlv_1", attempt: 1, secret: []byte("0123456789abcdef"), userAgent: "dzhook-test"}
}

func attemptTo(c *retryablehttp.Client, url string) attemptResult {
	return post(context.Background(), c, testRequest(url), faultTimeout, faultLimit)
}

// attempts makes n attempts in turn and fails the test on any that is
// not a 200.
func attempts(t *testing.T, p *h1Peer, n int) {
	t.Helper()
	c := openClient(faultTimeout, nil)
	for i := range n {
		if res := attemptTo(c, p.url); res.Status != 200 {
			t.Fatalf("attempt %d: %+v, want 200", i+1, res)
		}
	}
}

func TestH1KeepAlive(t *testing.T) {
	p := newH1Peer(t, answerWith(okAnswer))
	attempts(t, p, 20)
	if n := p.conns.Load(); n != 1 {
		t.Errorf("20 attempts in turn took %d connections, want 1 (keep-alive)", n)
	}
}

// TestH1KeptConnectionGone: a receiver that ends kept connections its own
// way costs no attempt. Each case makes 3 attempts; each must be a 200
// and the peer must have read exactly reqs requests on conns connections.
func TestH1KeptConnectionGone(t *testing.T) {
	for _, tc := range []struct {
		name        string
		serve       func(c net.Conn, i int, req *http.Request) bool
		reqs, conns int64
		// closes: the peer closes each connection after its answer, and
		// each attempt after the first waits until it has (on loopback
		// its FIN has then arrived): the close racing the next request
		// is a failed attempt, as it is with any client.
		closes bool
	}{
		{
			// Closed after each answer without "Connection: close": seen
			// at the next attempt.
			name:  "closed after each answer",
			serve: func(c net.Conn, _ int, _ *http.Request) bool { _, _ = io.WriteString(c, okAnswer); return false },
			reqs:  3, conns: 3, closes: true,
		},
		{
			// Bytes after the answer, in the same write (read with it):
			// not the next attempt's answer, and not a peer to keep.
			name:  "an unasked answer right behind the answer",
			serve: answerWith(okAnswer + "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"),
			reqs:  3, conns: 3,
		},
		{
			name:  "Connection: close",
			serve: answerWith("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"),
			reqs:  3, conns: 3,
		},
		{
			// A body too large to read on is not read on: the connection
			// is closed instead.
			name:  "a body larger than the limit and the drain",
			serve: answerWith("HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + strings.Repeat("x", 200000)),
			reqs:  3, conns: 3,
		},
		{
			name:  "100 Continue, then the answer",
			serve: answerWith("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + okAnswer),
			reqs:  3, conns: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newH1Peer(t, tc.serve)
			c := openClient(faultTimeout, nil)
			for i := range 3 {
				if res := attemptTo(c, p.url); res.Status != 200 {
					t.Fatalf("attempt %d: %+v, want 200", i+1, res)
				}
				if tc.closes {
					select {
					case <-p.closed:
					case <-time.After(10 * time.Second):
						t.Fatal("the peer did not close its connection")
					}
				}
			}
			if n := p.reqs.Load(); n != tc.reqs {
				t.Errorf("the peer read %d requests for 3 attempts, want %d", n, tc.reqs)
			}
			if n := p.conns.Load(); n != tc.conns {
				t.Errorf("3 attempts took %d connections, want %d", n, tc.conns)
			}
		})
	}
}

// TestH1UnaskedAnswerWhileIdle: a "408 Request Timeout" that a server
// sends on an idle connection before closing it is not the next
// attempt's answer: the next attempt sees the connection is done and
// takes a new one.
func TestH1UnaskedAnswerWhileIdle(t *testing.T) {
	answered := make(chan struct{})
	p := newH1Peer(t, func(c net.Conn, i int, _ *http.Request) bool {
		if _, err := io.WriteString(c, okAnswer); err != nil || i > 0 {
			return false
		}
		<-answered
		_, _ = io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
		return false
	})
	c := openClient(faultTimeout, nil)
	if res := attemptTo(c, p.url); res.Status != 200 {
		t.Fatalf("first attempt: %+v", res)
	}
	close(answered)
	waitUnasked(t, c, p.closed)
	if res := attemptTo(c, p.url); res.Status != 200 {
		t.Fatalf("the attempt after an unasked 408: %+v, want 200 on a new connection", res)
	}
	if n := p.conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// waitUnasked waits until the peer closed its connection (closed) and
// what it sent before closing has reached the pooled connection: a
// loaded host may deliver it a moment after the peer's close returned.
func waitUnasked(t *testing.T, c *retryablehttp.Client, closed <-chan struct{}) {
	t.Helper()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the peer did not close its connection")
	}
	waitPending(t, c)
}

// TestH1NoResendOfAWrittenRequest: a receiver that reads the next request
// on a kept connection and hangs up (its keep-alive timer fired as the
// request came, or it crashed on it) may have acted on it: the attempt
// fails and is not sent again within it, as net/http has it for a POST.
func TestH1NoResendOfAWrittenRequest(t *testing.T) {
	p := newH1Peer(t, func(c net.Conn, i int, _ *http.Request) bool {
		if i > 0 {
			return false
		}
		_, err := io.WriteString(c, okAnswer)
		return err == nil
	})
	c := openClient(faultTimeout, nil)
	if res := attemptTo(c, p.url); res.Status != 200 {
		t.Fatalf("first attempt: %+v", res)
	}
	if res := attemptTo(c, p.url); res.Status != 0 || res.ErrorClass != ClassHTTP {
		t.Fatalf("second attempt, on the kept connection: %+v, want a failure of class http", res)
	}
	if n := p.reqs.Load(); n != 2 {
		t.Errorf("the peer read %d requests for 2 attempts, want 2 (no resend)", n)
	}
	if res := attemptTo(c, p.url); res.Status != 200 {
		t.Fatalf("third attempt, on a new connection: %+v", res)
	}
}

// TestH1ResendWhenNothingWritten: a reused connection that takes none of
// the request (the write fails at once) costs no attempt: the request
// goes on a new connection. The first connection's writes fail once the
// test arms it, standing for a socket the receiver closed after the look
// at it.
func TestH1ResendWhenNothingWritten(t *testing.T) {
	p := newH1Peer(t, answerWith(okAnswer))
	var armed atomic.Bool
	var dialled atomic.Int64
	dial := (&EgressGuard{}).Dialer(faultTimeout)
	c := newClient(faultTimeout, 1, func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil || dialled.Add(1) > 1 {
			return conn, err
		}
		return &failingWrites{Conn: conn, armed: &armed}, nil
	}, nil)
	if res := attemptTo(c, p.url); res.Status != 200 {
		t.Fatalf("first attempt: %+v", res)
	}
	armed.Store(true)
	if res := attemptTo(c, p.url); res.Status != 200 {
		t.Fatalf("second attempt: %+v, want 200 on a new connection", res)
	}
	if n, d := p.reqs.Load(), dialled.Load(); n != 2 || d != 2 {
		t.Errorf("the peer read %d requests on %d connections, want 2 on 2", n, d)
	}
}

// failingWrites is a connection whose writes fail, nothing written, once
// armed.
type failingWrites struct {
	net.Conn
	armed *atomic.Bool
}

func (f *failingWrites) Write(p []byte) (int, error) {
	if f.armed.Load() {
		return 0, syscall.EPIPE
	}
	return f.Conn.Write(p)
}

// TestH1HeaderValues: a header value with a control character is refused
// before anything is sent, and the message names the header, not its
// value.
func TestH1HeaderValues(t *testing.T) {
	p := newH1Peer(t, answerWith(okAnswer))
	r := testRequest(p.url)
	r.headers = http.Header{"X-Tenant": {"acme\x00secret"}}
	res := post(context.Background(), openClient(faultTimeout, nil), r, faultTimeout, faultLimit)
	if res.Status != 0 || res.ErrorClass != ClassHTTP || !strings.Contains(res.Error, "X-Tenant") || strings.Contains(res.Error, "secret") {
		t.Errorf("%+v, want a failure of class http naming X-Tenant without its value", res)
	}
	if n := p.reqs.Load(); n != 0 {
		t.Errorf("the peer read %d requests, want none", n)
	}
}

// TestH1NoSecondSendOnNewConnection: a failure on a new connection is the
// attempt's: the receiver read the request, and sending it again would
// deliver that attempt twice.
func TestH1NoSecondSendOnNewConnection(t *testing.T) {
	p := newH1Peer(t, func(net.Conn, int, *http.Request) bool { return false })
	res := attemptTo(openClient(faultTimeout, nil), p.url)
	if res.Status != 0 || res.ErrorClass != ClassHTTP {
		t.Fatalf("%+v, want a failed attempt of class http", res)
	}
	if n := p.reqs.Load(); n != 1 {
		t.Errorf("the peer read %d requests, want 1", n)
	}
	if !strings.Contains(res.Error, "closed before an answer") {
		t.Errorf("error %q, want it to say the connection closed before an answer", res.Error)
	}
}

// TestH1Cancelled: an attempt waiting for a hung receiver ends when its
// context is cancelled (dzhook stopping), long before its timeout.
func TestH1Cancelled(t *testing.T) {
	hung, arrived := make(chan struct{}), make(chan struct{}, 1)
	t.Cleanup(func() { close(hung) })
	p := newH1Peer(t, func(net.Conn, int, *http.Request) bool { arrived <- struct{}{}; <-hung; return false })
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-arrived // the attempt is waiting for its answer
		cancel()
	}()
	start := time.Now()
	res := post(ctx, openClient(time.Minute, nil), testRequest(p.url), time.Minute, faultLimit)
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Fatalf("cancelled attempt took %v (timeout 1 min)", elapsed)
	}
	if res.Status != 0 || res.ErrorClass != ClassTimeout {
		t.Errorf("%+v, want no status and class timeout", res)
	}
}

// TestH1IdleSweep: a kept connection idle for longer than the idle
// timeout is closed by dzhook, not left open on the receiver.
func TestH1IdleSweep(t *testing.T) {
	p := newH1Peer(t, answerWith(okAnswer))
	c := openClient(faultTimeout, nil)
	c.HTTPClient.Transport.(*h1Transport).idleTimeout = 100 * time.Millisecond
	if res := attemptTo(c, p.url); res.Status != 200 {
		t.Fatalf("%+v", res)
	}
	select { // the peer would close it itself after a minute
	case <-p.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the idle connection was still open 5 s after its 100 ms idle timeout")
	}
	if res := attemptTo(c, p.url); res.Status != 200 {
		t.Fatalf("after the sweep: %+v", res)
	}
}

// TestH1OneSweepAtATime: a sweep that fired as CloseIdleConnections
// stopped it, and ran once a later put had scheduled the next, does not
// schedule one more: the pool keeps one chain of sweeps.
func TestH1OneSweepAtATime(t *testing.T) {
	p := newH1Peer(t, answerWith(okAnswer))
	c := openClient(faultTimeout, nil)
	tr := c.HTTPClient.Transport.(*h1Transport)
	tr.idleTimeout = time.Hour // no sweep fires by itself here
	if res := attemptTo(c, p.url); res.Status != 200 {
		t.Fatalf("%+v", res)
	}
	tr.mu.Lock()
	fired := tr.sweeps // the sweep that "fires" below
	tr.mu.Unlock()
	tr.CloseIdleConnections()
	if res := attemptTo(c, p.url); res.Status != 200 { // its connection goes idle: a new sweep
		t.Fatalf("%+v", res)
	}
	tr.mu.Lock()
	latest := tr.sweep
	tr.mu.Unlock()
	tr.closeExpired(fired) // the stopped sweep, running late
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.sweep != latest {
		t.Errorf("the late sweep scheduled another beside the latest one")
	}
	if len(tr.idle) != 1 {
		t.Errorf("%d receivers with idle connections after the late sweep, want 1 (not expired)", len(tr.idle))
	}
}

// TestH1OwnConnectionClose: a subscription that sends "Connection:
// close" itself gets a new connection per attempt, whether or not the
// receiver says close in its answer.
func TestH1OwnConnectionClose(t *testing.T) {
	p := newH1Peer(t, answerWith(okAnswer)) // keeps its side open
	c := openClient(faultTimeout, nil)
	tr := c.HTTPClient.Transport.(*h1Transport)
	r := testRequest(p.url)
	r.headers = http.Header{"Connection": {"Close"}}
	for i := range 2 {
		if res := post(context.Background(), c, r, faultTimeout, faultLimit); res.Status != 200 {
			t.Fatalf("attempt %d: %+v", i+1, res)
		}
		tr.mu.Lock()
		idle := len(tr.idle)
		tr.mu.Unlock()
		if idle != 0 {
			t.Fatalf("after attempt %d: a connection kept idle although the request said Connection: close", i+1)
		}
	}
	if n := p.conns.Load(); n != 2 {
		t.Errorf("%d connections for 2 attempts, want 2", n)
	}
}

// TestH1Concurrent: attempts from many workers at once share the pool
// (run with -race).
func TestH1Concurrent(t *testing.T) {
	p := newH1Peer(t, answerWith(okAnswer))
	c := newClient(faultTimeout, 4, (&EgressGuard{}).Dialer(faultTimeout), nil)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if res := attemptTo(c, p.url); res.Status != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of 400 attempts failed", n)
	}
	if n := p.reqs.Load(); n != 400 {
		t.Errorf("the peer read %d requests, want 400", n)
	}
}

// protoServer is a TLS server answering with the protocol each request
// came over (HTTP/2 offered if h2), counting its connections; pool trusts
// its certificate.
func protoServer(t *testing.T, h2 bool) (srv *httptest.Server, conns *atomic.Int64, pool *x509.CertPool) {
	t.Helper()
	conns = &atomic.Int64{}
	srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, r.Proto) }))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.EnableHTTP2 = h2
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool = x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return srv, conns, pool
}

// TestH1KeepAliveTLS: over TLS (HTTP/1.1 and HTTP/2), attempts in turn
// share one connection; the HTTP/2 receiver is served by net/http's h2
// client on the connection of the first handshake.
func TestH1KeepAliveTLS(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		srv, conns, pool := protoServer(t, h2)
		c := openClient(faultTimeout, pool)
		want := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]
		for i := range 10 {
			if res := attemptTo(c, srv.URL); res.Status != 200 || string(res.Body) != want {
				t.Fatalf("HTTP/2 %v, attempt %d: %+v, want 200 over %s", h2, i+1, res, want)
			}
		}
		if n := conns.Load(); n != 1 {
			t.Errorf("HTTP/2 %v: 10 attempts in turn took %d connections, want 1", h2, n)
		}
	}
}

// TestH1TLSReceiverClosedIdle: a TLS receiver that closes idle
// connections (close_notify, then FIN) costs no attempt, however many of
// them are in the pool: each is seen to be closed, and a new one taken.
func TestH1TLSReceiverClosedIdle(t *testing.T) {
	var opened, closed atomic.Int64
	bothClosed := make(chan struct{})
	var arrived atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n := arrived.Add(1); n <= 2 { // the first two at once: two pooled connections
			if n == 2 {
				close(release)
			}
			<-release
		}
		_, _ = io.WriteString(w, "ok")
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Config.IdleTimeout = 100 * time.Millisecond
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed:
			if closed.Add(1) == 2 {
				close(bothClosed)
			}
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	c := newClient(faultTimeout, 2, (&EgressGuard{}).Dialer(faultTimeout), pool)
	done := make(chan attemptResult, 2)
	for range 2 {
		go func() { done <- attemptTo(c, srv.URL) }()
	}
	for range 2 {
		if res := <-done; res.Status != 200 {
			t.Fatalf("warm-up: %+v", res)
		}
	}
	select { // the receiver closed both idle connections
	case <-bothClosed:
	case <-time.After(10 * time.Second):
		t.Fatal("the receiver did not close its idle connections")
	}
	if res := attemptTo(c, srv.URL); res.Status != 200 {
		t.Fatalf("after the receiver closed the idle connections: %+v, want 200 on a new one", res)
	}
	if n := opened.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
}

// TestH1TLSUnaskedAnswerWhileIdle is TestH1UnaskedAnswerWhileIdle under
// TLS, where bytes on an idle connection may also be a session ticket.
func TestH1TLSUnaskedAnswerWhileIdle(t *testing.T) {
	answered := make(chan struct{})
	rcv := serveUnasked408(t, answered, nil)
	c := openClient(faultTimeout, rcv.pool)
	if res := attemptTo(c, rcv.url); res.Status != 200 {
		t.Fatalf("first attempt: %+v", res)
	}
	close(answered)
	waitUnasked(t, c, rcv.closed)
	if res := attemptTo(c, rcv.url); res.Status != 200 {
		t.Fatalf("the attempt after an unasked 408: %+v, want 200 on a new connection", res)
	}
	if n, r := rcv.conns.Load(), rcv.reqs.Load(); n != 2 || r != 2 {
		t.Errorf("%d connections, %d requests; want 2 and 2", n, r)
	}
}

// TestH1TLSPartialRecordWhileIdle: an unasked answer whose TLS record has
// only partly arrived when the idle connection is looked at (the receiver
// sent its 408 as it closed, the last bytes still on their way) must not
// let the connection be reused: the next attempt goes on a new one.
// Before the check held its probe to whole records, the probe took the
// part that had come into crypto/tls's buffer, the socket looked empty,
// and the 408 was read as the next attempt's answer.
func TestH1TLSPartialRecordWhileIdle(t *testing.T) {
	answered, release := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(release) })
	rcv := serveUnasked408(t, answered, func(raw net.Conn) (net.Conn, func()) {
		hold := &holdBackConn{Conn: raw, release: release}
		return hold, func() { hold.holdBack.Store(10) } // the record's last 10 bytes wait for release
	})
	c := openClient(faultTimeout, rcv.pool)
	if res := attemptTo(c, rcv.url); res.Status != 200 {
		t.Fatalf("first attempt: %+v", res)
	}
	close(answered)
	waitPending(t, c)
	if res := attemptTo(c, rcv.url); res.Status != 200 {
		t.Fatalf("the attempt after half an unasked 408: %+v, want 200 on a new connection", res)
	}
	if n := rcv.conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// unasked408 is a TLS receiver for the tests of unasked answers.
type unasked408 struct {
	url         string
	pool        *x509.CertPool // trusts its certificate
	conns, reqs atomic.Int64
	closed      chan struct{} // a value as each connection ends
}

// serveUnasked408 starts a TLS receiver on 127.0.0.1 that answers 200 to
// every request; its first connection, once answered is closed, sends an
// unasked 408 and closes. wrap, when set, gives each accepted socket to
// TLS through a wrapper, and a hook run on the first connection just
// before its 408.
func serveUnasked408(t *testing.T, answered <-chan struct{}, wrap func(net.Conn) (net.Conn, func())) *unasked408 {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.StartTLS() // for its certificate
	t.Cleanup(srv.Close)
	cfg := srv.TLS.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	rcv := &unasked408{url: "https://" + ln.Addr().String(), pool: x509.NewCertPool(), closed: make(chan struct{}, 10)}
	rcv.pool.AddCert(srv.Certificate())
	go func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			first := rcv.conns.Add(1) == 1
			before := func() {}
			if wrap != nil {
				var hook func()
				if raw, hook = wrap(raw); hook != nil {
					before = hook
				}
			}
			c := tls.Server(raw, cfg)
			go func() {
				defer func() { c.Close(); rcv.closed <- struct{}{} }()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					rcv.reqs.Add(1)
					if _, err := io.WriteString(c, okAnswer); err != nil {
						return
					}
					if first {
						<-answered
						before()
						_, _ = io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
						return
					}
				}
			}()
		}
	}()
	return rcv
}

// holdBackConn writes all but the last holdBack bytes of a write at
// once, and those when release is closed.
type holdBackConn struct {
	net.Conn
	holdBack atomic.Int64
	release  <-chan struct{}
}

func (c *holdBackConn) Write(p []byte) (int, error) {
	k := int(c.holdBack.Load())
	if k == 0 || len(p) <= k {
		return c.Conn.Write(p)
	}
	n, err := c.Conn.Write(p[:len(p)-k])
	if err != nil {
		return n, err
	}
	<-c.release
	m, err := c.Conn.Write(p[len(p)-k:])
	return n + m, err
}

// waitPending waits until the pooled connection's socket holds bytes: a
// loaded host may deliver what the peer sent a moment after its write
// returned.
func waitPending(t *testing.T, c *retryablehttp.Client) {
	t.Helper()
	tr := c.HTTPClient.Transport.(*h1Transport)
	deadline := time.Now().Add(5 * time.Second)
	for {
		tr.mu.Lock()
		var pooled *h1Conn
		for _, list := range tr.idle {
			pooled = list[0]
		}
		tr.mu.Unlock()
		if pooled == nil {
			t.Fatal("no pooled connection")
		}
		var b [1]byte
		n := 0
		_ = pooled.raw.Read(func(fd uintptr) bool {
			n, _, _ = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			return true
		})
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("what the peer sent never reached the pooled connection")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestH1HandOverHostAsWritten: a receiver whose URL writes its host in
// capitals gets the handed-over HTTP/2 connection too (net/http names the
// host as written), and no connection is left behind.
func TestH1HandOverHostAsWritten(t *testing.T) {
	srv, conns, pool := protoServer(t, true)
	target := srv.Listener.Addr().String()
	_, port, _ := net.SplitHostPort(target)
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, target)
	}
	c := newClient(faultTimeout, 1, dial, pool) // example.com is the test certificate's name
	for i := range 5 {
		if res := attemptTo(c, "https://EXAMPLE.COM:"+port+"/"); res.Status != 200 || string(res.Body) != "HTTP/2.0" {
			t.Fatalf("attempt %d: %+v", i+1, res)
		}
	}
	tr := c.HTTPClient.Transport.(*h1Transport)
	tr.mu.Lock()
	pending := len(tr.pending)
	tr.mu.Unlock()
	if n := conns.Load(); n != 1 || pending != 0 {
		t.Errorf("%d connections, %d left pending; want 1 and 0", n, pending)
	}
}

// TestH1AnswerHeadBounds: at most five 1xx answers are skipped, and an
// answer's head over 1 MB is refused (1xx included) instead of buffered.
func TestH1AnswerHeadBounds(t *testing.T) {
	cont := "HTTP/1.1 100 Continue\r\n\r\n"
	for _, tc := range []struct {
		name   string
		answer string
		status int
		error  string
	}{
		{"five 1xx, then the answer", strings.Repeat(cont, 5) + okAnswer, 200, ""},
		{"six 1xx", strings.Repeat(cont, 6) + okAnswer, 0, "more than five 1xx answers"},
		{"a 2 MB header", "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\nContent-Length: 2\r\n\r\nok", 0, "larger than 1 MB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newH1Peer(t, answerWith(tc.answer))
			res := attemptTo(openClient(faultTimeout, nil), p.url)
			if res.Status != tc.status || !strings.Contains(res.Error, tc.error) || (tc.error != "" && res.ErrorClass != ClassHTTP) {
				t.Errorf("%+v, want status %d and an error saying %q", res, tc.status, tc.error)
			}
		})
	}
}

// TestH1DeadlineBoundsEveryStage: the attempt's timeout bounds a TLS
// handshake that never ends and an HTTP/2 answer whose body never ends,
// as it bounds HTTP/1.1's (TestDeliveryFaults): the direct path carries
// the timeout as a deadline, not in the request's context, and must hand
// it to the dial and to h2 itself.
func TestH1DeadlineBoundsEveryStage(t *testing.T) {
	hung := make(chan struct{})
	silent := rawPeer(t, func(c *net.TCPConn) { <-hung; c.Close() }) // accepts, says nothing
	srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "part")
		w.(http.Flusher).Flush()
		select { // the rest of the body never comes
		case <-hung:
		case <-r.Context().Done():
		}
	}), true, true)
	t.Cleanup(func() { close(hung) }) // before srv.Close, which waits for its handlers
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	for _, tc := range []struct {
		name, url string
		want      attemptResult // its status, class and body
	}{
		{"TLS handshake never answered", strings.Replace(silent, "http://", "https://", 1), attemptResult{ErrorClass: ClassTimeout}},
		{"HTTP/2 body never ended", srv.URL, attemptResult{Status: 200, Body: []byte("part")}},
	} {
		done := make(chan attemptResult, 1)
		start := time.Now()
		go func() { done <- attemptTo(openClient(faultTimeout, pool), tc.url) }()
		var res attemptResult
		select {
		case res = <-done:
		case <-time.After(10 * faultTimeout):
			t.Fatalf("%s: the attempt has not ended after %v (timeout %v)", tc.name, 10*faultTimeout, faultTimeout)
		}
		if elapsed := time.Since(start); elapsed > faultTimeout+faultSlack {
			t.Errorf("%s: the attempt took %v, timeout %v", tc.name, elapsed, faultTimeout)
		}
		if res.Status != tc.want.Status || res.ErrorClass != tc.want.ErrorClass || string(res.Body) != string(tc.want.Body) {
			t.Errorf("%s: %+v, want status %d, class %q, body %q", tc.name, res, tc.want.Status, tc.want.ErrorClass, tc.want.Body)
		}
	}
}

// TestH1TargetFollowsTheURL: a client asked for one URL, then another,
// then the first again, sends each attempt to the URL it was asked for
// (the transport keeps the last URL parsed), with the URL's user info as
// Basic credentials unless a header of the subscription's sets
// Authorization itself, and never in the request line.
func TestH1TargetFollowsTheURL(t *testing.T) {
	type seen struct{ auth, uri, host string }
	got := make(chan seen, 10)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Header.Get("Authorization"), r.RequestURI, r.Host}
	})
	a, b := quietServer(t, handler, false, false), quietServer(t, handler, false, false)
	withUser := strings.Replace(b.URL, "http://", "http://crm:p%40ss@", 1) + "/in?x=1"
	c := openClient(faultTimeout, nil)
	for i, tc := range []struct {
		url     string
		headers http.Header
		want    seen
	}{
		{a.URL + "/a", nil, seen{"", "/a", a.Listener.Addr().String()}},
		{withUser, nil, seen{"Basic Y3JtOnBAc3M=", "/in?x=1", b.Listener.Addr().String()}}, // crm:p@ss
		{withUser, http.Header{"Authorization": {"Bearer own"}}, seen{"Bearer own", "/in?x=1", b.Listener.Addr().String()}},
		{a.URL + "/a", nil, seen{"", "/a", a.Listener.Addr().String()}},
	} {
		r := testRequest(tc.url)
		r.headers = tc.headers
		if res := post(context.Background(), c, r, faultTimeout, faultLimit); res.Status != 200 {
			t.Fatalf("attempt %d to %s: %+v", i+1, tc.url, res)
		}
		if s := <-got; s != tc.want {
			t.Errorf("attempt %d to %s: the receiver saw %+v, want %+v", i+1, tc.url, s, tc.want)
		}
	}
}

// TestWriteRequestAsRequestWrite: the h1 transport writes the requests
// send makes byte for byte as Request.Write does, and leaves to it the
// hosts it would rewrite or leave out.
func TestWriteRequestAsRequestWrite(t *testing.T) {
	many := http.Header{}
	for i := range 20 { // more than writeHead's room on the stack
		many[fmt.Sprintf("X-Many-%02d", i)] = []string{strconv.Itoa(i)}
	}
	for _, tc := range []struct {
		name, method, url string
		header            http.Header
		body              string
		fast              bool // the target has a head: its host is sent as it is
	}{
		{"POST with a body", "POST", "http://127.0.0.1:8080/hooks/dzdesk?token=t&x=%20y", http.Header{
			"Content-Type": {"application/json"}, "User-Agent": {"dzhook/1.0"}, "X-Dzdesk-Signature": {"sha256=ab"}}, `{"id":"whk_1"}`, true},
		{"PUT", "PUT", "https://crm.example.com/in", http.Header{"User-Agent": {"dzhook"}}, "{}", true},
		{"POST without a body", "POST", "http://crm.example.com:8443/", http.Header{"User-Agent": {"dzhook"}}, "", true},
		{"GET without a body", "GET", "http://crm.example.com/", http.Header{"User-Agent": {"dzhook"}}, "", true},
		{"no User-Agent", "POST", "http://crm.example.com/", http.Header{"Accept": {"*/*"}}, "x", true},
		{"empty User-Agent", "POST", "http://crm.example.com/", http.Header{"User-Agent": {""}}, "x", true},
		{"blank User-Agent", "POST", "http://crm.example.com/", http.Header{"User-Agent": {"   "}}, "x", true},
		{"PATCH without a body", "PATCH", "http://crm.example.com/", http.Header{"User-Agent": {"dzhook"}}, "", true},
		{"DELETE without a body", "DELETE", "http://crm.example.com/", http.Header{"User-Agent": {"dzhook"}}, "", true},
		{"OPTIONS without a body", "OPTIONS", "http://crm.example.com/", http.Header{"User-Agent": {"dzhook"}}, "", true},
		{"User-Agent without a value", "POST", "http://crm.example.com/", http.Header{"User-Agent": nil}, "x", true},
		{"values to trim, several values, a name not canonical", "POST", "http://crm.example.com/", http.Header{
			"X-Pad": {"  a b \t"}, "X-Two": {"1", " 2"}, "x-lower": {"v"}, "User-Agent": {"\tua "}}, "x", true},
		{"headers Request.Write leaves out or writes itself", "POST", "http://crm.example.com/", http.Header{
			"Host": {"evil.example"}, "Content-Length": {"999"}, "Transfer-Encoding": {"chunked"}, "Trailer": {"X"},
			"Bad Name": {"v"}, "User-Agent": {"dzhook"}}, "x", true},
		{"more headers than the stack holds", "POST", "http://crm.example.com/", many, "x", true},
		{"IPv6 host, empty port", "POST", "http://[::1]:/p", nil, "x", true},
		{"IDNA host", "POST", "http://bücher.example/p", nil, "x", false},
		{"IPv6 zone", "POST", "http://[fe80::1%25eth0]:8080/p", nil, "x", false},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		tg, err := newTarget(tc.url, u)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := tg.head != ""; got != tc.fast {
			t.Errorf("%s: head %q, want it made: %v", tc.name, tg.head, tc.fast)
		}
		write := func(f func(*bufio.Writer, *http.Request) error) string {
			req := newRequest(tc.method, tg, []byte(tc.body), len(tc.header))
			for k, v := range tc.header {
				req.Header[k] = v
			}
			var b strings.Builder
			w := bufio.NewWriter(&b)
			if err := f(w, req); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			return b.String()
		}
		want := write(func(w *bufio.Writer, r *http.Request) error { return r.Write(w) })
		got := write(func(w *bufio.Writer, r *http.Request) error { return writeRequest(w, r, tg.head) })
		if got != want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, want)
		}
	}
}

// TestH1WatchPerConnection: the cancellation that ends an exchange is
// registered once per connection and context, not per attempt, and a
// connection closed leaves no registration on the context (which lives
// as long as dzhook). A connection kept across a context that has been
// cancelled serves the next context's attempts.
func TestH1WatchPerConnection(t *testing.T) {
	var live, made atomic.Int64
	afterFunc = func(ctx context.Context, f func()) func() bool {
		made.Add(1)
		live.Add(1)
		stop := context.AfterFunc(ctx, func() { live.Add(-1); f() })
		return func() bool {
			stopped := stop()
			if stopped {
				live.Add(-1)
			}
			return stopped
		}
	}
	t.Cleanup(func() { afterFunc = context.AfterFunc })
	life, cancel := context.WithCancel(context.Background())
	defer cancel()
	try := func(ctx context.Context, c *retryablehttp.Client, url string) {
		t.Helper()
		if res := post(ctx, c, testRequest(url), faultTimeout, faultLimit); res.Status != 200 {
			t.Fatalf("%+v, want 200", res)
		}
	}

	kept := newH1Peer(t, answerWith(okAnswer))
	c := openClient(faultTimeout, nil)
	for range 20 {
		try(life, c, kept.url)
	}
	if n, m := kept.conns.Load(), made.Load(); n != 1 || m != 1 {
		t.Errorf("20 attempts on a kept connection: %d connections, %d registrations; want 1 and 1", n, m)
	}
	// A context of its own (an API call's), cancelled once its attempt
	// is done; then the lifetime's again, on the same connection.
	apiCall, endCall := context.WithCancel(context.Background())
	try(apiCall, c, kept.url)
	endCall()
	try(life, c, kept.url)
	if n, m := kept.conns.Load(), made.Load(); n != 1 || m != 3 {
		t.Errorf("after a cancelled context of its own: %d connections, %d registrations; want 1 and 3", n, m)
	}
	c.HTTPClient.CloseIdleConnections()
	if n := live.Load(); n != 0 {
		t.Errorf("%d registrations left after the connection closed", n)
	}

	closing := newH1Peer(t, answerWith("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"))
	for range 20 {
		try(life, c, closing.url)
	}
	if n := live.Load(); n != 0 {
		t.Errorf("20 connections closed after their answer left %d registrations", n)
	}
}

// TestH1IdleAfterItsContextEnded: a kept connection whose last attempt's
// context was cancelled while it idled (its watch fired: a past
// deadline) is still looked at before it is reused, so a receiver that
// closed it, or sent a 408 and closed it, in the meantime costs no
// attempt. (Found by a review: the look failed on the past deadline and
// took the connection for open.)
func TestH1IdleAfterItsContextEnded(t *testing.T) {
	for _, tc := range []struct{ name, then string }{
		{"closed", ""},
		{"408, then closed", "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"},
	} {
		idled := make(chan struct{})
		p := newH1Peer(t, func(c net.Conn, i int, _ *http.Request) bool {
			if _, err := io.WriteString(c, okAnswer); err != nil || i > 0 {
				return false
			}
			<-idled
			_, _ = io.WriteString(c, tc.then)
			return false
		})
		c := openClient(faultTimeout, nil)
		apiCall, endCall := context.WithCancel(context.Background())
		if res := post(apiCall, c, testRequest(p.url), faultTimeout, faultLimit); res.Status != 200 {
			t.Fatalf("%s: first attempt: %+v", tc.name, res)
		}
		endCall()
		tr := c.HTTPClient.Transport.(*h1Transport)
		tr.mu.Lock()
		var kept *h1Conn
		for _, list := range tr.idle {
			kept = list[0]
		}
		tr.mu.Unlock()
		// The watch's callback has run once the socket's reads fail at
		// once (a past deadline).
		testutil.Eventually(t, 5*time.Second, "the cancelled context's callback", func() bool {
			return kept.raw.Read(func(uintptr) bool { return true }) != nil
		})
		close(idled)
		<-p.closed // the receiver is done with the kept connection
		if res := attemptTo(c, p.url); res.Status != 200 {
			t.Errorf("%s: %+v, want 200 on a new connection", tc.name, res)
		}
		if n := p.conns.Load(); n != 2 {
			t.Errorf("%s: %d connections, want 2", tc.name, n)
		}
	}
}
