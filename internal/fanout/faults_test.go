package fanout

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/dzdesk/dzhook/internal/journal"
)

// The fault tests make one attempt (post) against real peers on 127.0.0.1
// that misbehave the ways receivers do, and check what the attempt
// records: status, error class, kept body and message. Every URL carries
// ?token=…, as receivers' URLs do, and no message may repeat it.

const (
	// faultTimeout is delivery.timeout for these tests: ample for a
	// loopback answer under -race, short enough that slow peers cost
	// little.
	faultTimeout = 800 * time.Millisecond
	// faultLimit is delivery.response_body_limit.
	faultLimit = 4096
	// faultToken stands for a credential in a receiver's query string.
	faultToken = "SECRET-TOKEN-7f3a9c"
	// faultSlack is how much longer than its timeout an attempt may take:
	// scheduling under -race, closing connections.
	faultSlack = time.Second
)

// faultSchedule is the retry schedule Decide is asked about: attempt 1
// has attempts left after it.
var faultSchedule = []time.Duration{0, time.Minute, 5 * time.Minute}

// withToken adds the credential-bearing query string to a base URL.
func withToken(base string) string { return base + "/hook?token=" + faultToken }

// openClient is a subscription's client with the default (open) egress
// guard and the system roots.
func openClient(timeout time.Duration, roots *x509.CertPool) *retryablehttp.Client {
	return newClient(timeout, 1, (&EgressGuard{}).Dialer(timeout), roots)
}

// quietServer is an httptest server whose own error log (TLS handshake
// failures, broken pipes) stays out of the test output.
func quietServer(t *testing.T, h http.Handler, tlsOn, http2 bool) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.EnableHTTP2 = http2
	if tlsOn {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv
}

// rawPeer serves every connection with fn on a bare listener: for peers
// that break HTTP itself. fn owns the connection.
func rawPeer(t *testing.T, fn func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go fn(c.(*net.TCPConn))
		}
	}()
	return "http://" + ln.Addr().String()
}

// readRequest consumes one request, body included, so that closing the
// connection afterwards is a clean close (FIN) unless the peer asks for a
// reset.
func readRequest(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		return false
	}
	_, err = io.Copy(io.Discard, req.Body)
	return err == nil
}

// reset closes c with SO_LINGER 0, so the peer gets a TCP RST.
func reset(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

// nxdomainResolver is a resolver whose only server, on 127.0.0.1, says
// NXDOMAIN to every question: a DNS failure that does not depend on the
// machine's resolver. asked counts the questions it answered.
func nxdomainResolver(t *testing.T, asked *atomic.Int64) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 12 {
				continue
			}
			// The query itself, turned into an answer: same id and
			// question, QR set, RD kept, RA set, RCODE 3 (NXDOMAIN).
			resp := slices.Clone(buf[:n])
			resp[2] = 0x80 | resp[2]&0x01
			resp[3] = 0x80 | 3
			asked.Add(1)
			_, _ = pc.WriteTo(resp, addr)
		}
	}()
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", pc.LocalAddr().String())
		},
	}
}

// head is the start of a body, for messages.
func head(b []byte) []byte { return b[:min(len(b), 64)] }

// faultCase is one misbehaving peer and what one attempt against it must
// record.
type faultCase struct {
	name string
	// peer starts the receiver and returns the URL to post to.
	peer func(t *testing.T) string
	// client is the subscription's client; openClient(timeout, nil) when
	// nil.
	client  func(t *testing.T, timeout time.Duration) *retryablehttp.Client
	timeout time.Duration // faultTimeout when 0

	status int
	class  string // "" for a delivered attempt
	// classes, when set, lists the acceptable classes instead of class
	// (a reset can surface as either).
	classes []string
	// body, when non-nil, is the exact kept body; checkBody, when set,
	// checks it instead.
	body      []byte
	checkBody func(t *testing.T, body []byte)
	// errorHas must appear in the message.
	errorHas []string
	// after runs once the attempt is over: what the peer observed, or
	// what depends on the peer's address.
	after func(t *testing.T, res attemptResult)
	// minElapsed is a lower bound on the attempt's wall time (it really
	// waited for the timeout).
	minElapsed time.Duration
}

func TestDeliveryFaults(t *testing.T) {
	var cases []faultCase

	// A 2xx whose body trickles in past the timeout: post keeps what
	// arrived and the receiver's 2xx stands ("a body cut short does not
	// undo that"), so the attempt is delivered, ending at the timeout.
	trickle := func(status int) func(t *testing.T) string {
		return func(t *testing.T) string {
			srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.WriteHeader(status)
				w.(http.Flusher).Flush()
				stop := time.After(10 * time.Second)
				tick := time.NewTicker(200 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-r.Context().Done():
						return
					case <-stop:
						return
					case <-tick.C:
						if _, err := w.Write([]byte("x")); err != nil {
							return
						}
						w.(http.Flusher).Flush()
					}
				}
			}), false, false)
			return withToken(srv.URL)
		}
	}
	trickled := func(t *testing.T, body []byte) {
		// 200 ms a byte for 800 ms: about 4, all of them the peer's.
		if len(body) == 0 || len(body) > 6 || strings.Trim(string(body), "x") != "" {
			t.Errorf("body = %q, want the 1 to 6 bytes that arrived in time", body)
		}
	}
	cases = append(cases,
		faultCase{
			name: "2xx with a body slower than the timeout is delivered with what arrived",
			peer: trickle(200), status: 200, class: "", checkBody: trickled, minElapsed: faultTimeout,
		},
		faultCase{
			name: "5xx with a slow body is an http failure",
			peer: trickle(503), status: 503, class: ClassHTTP, checkBody: trickled, errorHas: []string{"HTTP 503"}, minElapsed: faultTimeout,
		},
		faultCase{
			name: "headers slower than the timeout",
			peer: func(t *testing.T) string {
				srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					// With the body read, the server notices the client
					// leaving and cancels r's context.
					_, _ = io.Copy(io.Discard, r.Body)
					select {
					case <-r.Context().Done():
					case <-time.After(10 * time.Second):
					}
				}), false, false)
				return withToken(srv.URL)
			},
			status: 0, class: ClassTimeout, body: []byte{}, errorHas: []string{"no answer within the delivery timeout"}, minElapsed: faultTimeout,
		},
	)

	// Connections that break before a complete answer.
	retryableBreak := []string{ClassConnect, ClassHTTP}
	cases = append(cases,
		faultCase{
			name: "reset in the middle of the status line",
			peer: func(t *testing.T) string {
				return rawPeer(t, func(c *net.TCPConn) {
					if readRequest(c) {
						_, _ = c.Write([]byte("HTTP/1.1 20"))
					}
					reset(c)
				})
			},
			status: 0, classes: retryableBreak, body: []byte{},
		},
		faultCase{
			name: "reset in the middle of the headers",
			peer: func(t *testing.T) string {
				return rawPeer(t, func(c *net.TCPConn) {
					if readRequest(c) {
						_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Type: text/pl"))
					}
					reset(c)
				})
			},
			status: 0, classes: retryableBreak, body: []byte{},
		},
		faultCase{
			name: "reset right after reading the request",
			peer: func(t *testing.T) string {
				return rawPeer(t, func(c *net.TCPConn) {
					readRequest(c)
					reset(c)
				})
			},
			status: 0, classes: retryableBreak, body: []byte{},
		},
		faultCase{
			name: "closed after reading the request, before any answer",
			peer: func(t *testing.T) string {
				return rawPeer(t, func(c *net.TCPConn) {
					readRequest(c)
					c.Close()
				})
			},
			status: 0, classes: retryableBreak, body: []byte{},
		},
		faultCase{
			name: "closed on accept, before reading anything",
			peer: func(t *testing.T) string {
				return rawPeer(t, func(c *net.TCPConn) { c.Close() })
			},
			status: 0, classes: retryableBreak, body: []byte{},
		},
		faultCase{
			// Complete 2xx headers, then 10 of the 100 promised bytes and a
			// clean close: the 2xx stands, the part that came is kept.
			name: "2xx whose body stops short is delivered with what came",
			peer: func(t *testing.T) string {
				return rawPeer(t, func(c *net.TCPConn) {
					if readRequest(c) {
						_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"))
					}
					c.Close()
				})
			},
			status: 200, class: "", body: []byte("0123456789"),
		},
		faultCase{
			name: "garbage instead of a status line",
			peer: func(t *testing.T) string {
				return rawPeer(t, func(c *net.TCPConn) {
					if readRequest(c) {
						_, _ = c.Write([]byte("SMTP ready\xff\r\n\r\n"))
					}
					c.Close()
				})
			},
			status: 0, class: ClassHTTP, body: []byte{}, errorHas: []string{"malformed HTTP"},
		},
		faultCase{
			// An echo service, or a port forwarded to the wrong place:
			// the "status" net/http cannot parse is our request line,
			// the URL's token in it.
			name: "the request echoed back instead of an answer",
			peer: func(t *testing.T) string {
				return withToken(rawPeer(t, func(c *net.TCPConn) {
					_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
					buf := make([]byte, 4096)
					n, _ := c.Read(buf)
					_, _ = c.Write(buf[:n])
					c.Close()
				}))
			},
			status: 0, class: ClassHTTP, body: []byte{}, errorHas: []string{"malformed HTTP status code"},
		},
	)

	// TLS: verification is on, always; a self-signed certificate passes
	// only with its own pool in RootCAs.
	tlsPeer := func(http2 bool, srvOut **httptest.Server) func(t *testing.T) string {
		return func(t *testing.T) string {
			srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.WriteString(w, r.Proto)
			}), true, http2)
			*srvOut = srv
			return withToken(srv.URL)
		}
	}
	var tlsSrv, tlsSrvPool, tlsSrvH2 *httptest.Server
	poolOf := func(srv **httptest.Server) func(t *testing.T, timeout time.Duration) *retryablehttp.Client {
		return func(t *testing.T, timeout time.Duration) *retryablehttp.Client {
			pool := x509.NewCertPool()
			pool.AddCert((*srv).Certificate())
			return openClient(timeout, pool)
		}
	}
	cases = append(cases,
		faultCase{
			name: "self-signed certificate without its pool",
			peer: tlsPeer(false, &tlsSrv), status: 0, class: ClassTLS, body: []byte{},
			errorHas: []string{"certificate"},
		},
		faultCase{
			// The receiver speaks plain HTTP on the port an https URL
			// names: the handshake fails on its first record, the answer
			// to the ClientHello, which net/http turns into
			// http.ErrSchemeMismatch.
			name: "https URL to a plain-HTTP port",
			peer: func(t *testing.T) string {
				srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), false, false)
				return withToken(strings.Replace(srv.URL, "http://", "https://", 1))
			},
			status: 0, class: ClassTLS, body: []byte{},
		},
		faultCase{
			name: "self-signed certificate with its pool (HTTP/1.1)",
			peer: tlsPeer(false, &tlsSrvPool), client: poolOf(&tlsSrvPool), status: 200, class: "", body: []byte("HTTP/1.1"),
		},
		faultCase{
			name: "self-signed certificate with its pool (HTTP/2)",
			peer: tlsPeer(true, &tlsSrvH2), client: poolOf(&tlsSrvH2), status: 200, class: "", body: []byte("HTTP/2.0"),
		},
	)

	// Names and ports that lead nowhere.
	var dnsAsked atomic.Int64
	cases = append(cases,
		faultCase{
			// The machine's own resolver, as deliveries use it. The timeout
			// is generous so that a slow or unreachable resolver still
			// surfaces as its own DNS error rather than as ours.
			name:    "name under .invalid, machine resolver",
			peer:    func(*testing.T) string { return "https://no-such-host.invalid/hook?token=" + faultToken },
			timeout: 30 * time.Second,
			status:  0, class: ClassDNS, body: []byte{}, errorHas: []string{"no-such-host.invalid"},
		},
		faultCase{
			name: "name under .invalid, resolver answering NXDOMAIN",
			peer: func(*testing.T) string { return "https://no-such-host.invalid/hook?token=" + faultToken },
			client: func(t *testing.T, timeout time.Duration) *retryablehttp.Client {
				d := &net.Dialer{Timeout: timeout, Resolver: nxdomainResolver(t, &dnsAsked)}
				return newClient(timeout, 1, d.DialContext, nil)
			},
			status: 0, class: ClassDNS, body: []byte{}, errorHas: []string{"no such host"},
			after: func(t *testing.T, _ attemptResult) {
				if dnsAsked.Load() == 0 {
					t.Error("the NXDOMAIN resolver was never asked")
				}
			},
		},
		faultCase{
			name: "connection refused",
			peer: func(t *testing.T) string {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				addr := ln.Addr().String()
				ln.Close() // nothing listens there now
				return withToken("http://" + addr)
			},
			status: 0, class: ClassConnect, body: []byte{}, errorHas: []string{"refused"},
		},
		faultCase{
			// Not reachable with a validated configuration (config parses
			// every URL), but the message is stored all the same.
			name:   "URL that does not parse",
			peer:   func(*testing.T) string { return "http://127.0.0.1:1/%zz?token=" + faultToken },
			status: 0, class: ClassHTTP, body: []byte{}, errorHas: []string{"build request"},
		},
	)

	// Bodies: at most the limit is kept, byte for byte.
	var written atomic.Int64
	writeErr := make(chan error, 1)
	const huge = 50 << 20
	pattern := bytes.Repeat([]byte("0123456789abcdef"), 2048) // 32 KiB
	cases = append(cases,
		faultCase{
			name: "50 MB answer: the limit is kept and the rest is not read",
			peer: func(t *testing.T) string {
				srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					w.Header().Set("Content-Length", strconv.Itoa(huge))
					w.WriteHeader(http.StatusOK)
					for written.Load() < huge {
						n, err := w.Write(pattern)
						written.Add(int64(n))
						if err != nil {
							writeErr <- err
							return
						}
					}
					writeErr <- nil
				}), false, false)
				return withToken(srv.URL)
			},
			status: 200, class: "", body: pattern[:faultLimit],
			after: func(t *testing.T, _ attemptResult) {
				select {
				case err := <-writeErr:
					if err == nil {
						t.Errorf("the receiver wrote all %d bytes: the attempt read the whole answer", huge)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("the receiver is still writing after 10 s (%d bytes): the connection was not closed", written.Load())
				}
				t.Logf("the receiver wrote %d bytes before seeing the close", written.Load())
				if n := written.Load(); n >= huge/2 {
					t.Errorf("the receiver wrote %d bytes before seeing the close, want far fewer than %d", n, huge)
				}
			},
		},
		faultCase{
			name: "invalid UTF-8 in a 2xx body is kept as bytes",
			peer: func(t *testing.T) string {
				srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					_, _ = w.Write([]byte("\xff\xfe ok"))
				}), false, false)
				return withToken(srv.URL)
			},
			status: 200, class: "", body: []byte("\xff\xfe ok"),
		},
		faultCase{
			name: "invalid UTF-8 in an error body is kept as bytes",
			peer: func(t *testing.T) string {
				srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					w.WriteHeader(http.StatusInternalServerError)
					_, _ = w.Write([]byte("boom \xc3\x28\x00"))
				}), false, false)
				return withToken(srv.URL)
			},
			status: 500, class: ClassHTTP, body: []byte("boom \xc3\x28\x00"), errorHas: []string{"HTTP 500"},
		},
	)

	// Redirects are not followed: the target never hears of the
	// delivery, and the message names it without its query string.
	for _, code := range []int{http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		var hits atomic.Int64
		var targetURL string
		cases = append(cases, faultCase{
			name: "redirect " + strconv.Itoa(code),
			peer: func(t *testing.T) string {
				target := quietServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }), false, false)
				targetURL = target.URL
				srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					http.Redirect(w, r, target.URL+"/landing?token="+faultToken, code)
				}), false, false)
				return withToken(srv.URL)
			},
			// http.Redirect writes no body for a POST.
			status: code, class: ClassHTTP, body: []byte{},
			errorHas: []string{"HTTP " + strconv.Itoa(code), "not followed"},
			after: func(t *testing.T, res attemptResult) {
				if n := hits.Load(); n != 0 {
					t.Errorf("the redirect target got %d requests, want none", n)
				}
				if want := "redirect to " + targetURL + "/landing?REDACTED not followed"; !strings.Contains(res.Error, want) {
					t.Errorf("error %q, want it to say %q", res.Error, want)
				}
			},
		})
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			timeout := tc.timeout
			if timeout == 0 {
				timeout = faultTimeout
			}
			url := tc.peer(t)
			client := openClient(timeout, nil)
			if tc.client != nil {
				client = tc.client(t, timeout)
			}
			start := time.Now()
			res := post(context.Background(), client, request{
				url: url, body: []byte(`{"id":"whk_1","event":"request.created"}`), eventType: "request.created",
				eventID: "whk_1", deliveryID: "dlv_1", attempt: 1, secret: []byte("0123456789abcdef"), userAgent: "dzhook-test",
			}, timeout, faultLimit)
			elapsed := time.Since(start)
			t.Logf("status %d, class %q, error %q, %d body bytes, %v", res.Status, res.ErrorClass, res.Error, len(res.Body), elapsed.Round(time.Millisecond))

			if res.Status != tc.status {
				t.Errorf("status = %d, want %d (%+v)", res.Status, tc.status, res)
			}
			switch {
			case tc.classes != nil:
				if !slices.Contains(tc.classes, res.ErrorClass) {
					t.Errorf("error class = %q, want one of %q (error %q)", res.ErrorClass, tc.classes, res.Error)
				}
			case res.ErrorClass != tc.class:
				t.Errorf("error class = %q, want %q (error %q)", res.ErrorClass, tc.class, res.Error)
			}
			if (res.ErrorClass == "") != (res.Error == "") {
				t.Errorf("error class %q with error %q: both or neither", res.ErrorClass, res.Error)
			}
			if tc.checkBody != nil {
				tc.checkBody(t, res.Body)
			} else if !bytes.Equal(res.Body, tc.body) {
				t.Errorf("body = %q (%d bytes), want %q (%d bytes)", head(res.Body), len(res.Body), head(tc.body), len(tc.body))
			}
			if len(res.Body) > faultLimit {
				t.Errorf("kept %d bytes of body, over the limit %d", len(res.Body), faultLimit)
			}
			for _, s := range tc.errorHas {
				if !strings.Contains(res.Error, s) {
					t.Errorf("error %q does not mention %q", res.Error, s)
				}
			}
			if strings.Contains(res.Error, faultToken) {
				t.Errorf("error %q repeats the URL's query string", res.Error)
			}
			if elapsed > timeout+faultSlack {
				t.Errorf("attempt took %v, over its timeout %v", elapsed, timeout)
			}
			if elapsed < tc.minElapsed {
				t.Errorf("attempt took %v, want it to wait for the %v timeout", elapsed, tc.minElapsed)
			}
			if res.Duration < 0 || res.Duration > elapsed {
				t.Errorf("recorded duration %v, want within [0, %v]", res.Duration, elapsed)
			}

			// What the retry policy makes of it, engine-free: a failure
			// of any class is retried while attempts remain; a 2xx is
			// delivered.
			want := Retry
			if res.Status >= 200 && res.Status < 300 {
				want = Delivered
			}
			if got := Next(Attempted{Attempt: 1, Trigger: journal.TriggerAuto, Status: res.Status, RetryAfter: res.RetryAfter}, faultSchedule, time.Now()).Outcome; got != want {
				t.Errorf("Next after status %d, class %q = %v, want %v", res.Status, res.ErrorClass, got, want)
			}
			if tc.after != nil {
				tc.after(t, res)
			}
		})
	}
}

// TestRedirectMessage: the message names where the receiver redirected
// to, with the query string (and any user info) replaced.
func TestRedirectMessage(t *testing.T) {
	var hits atomic.Int64
	target := quietServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }), false, false)
	for _, tc := range []struct {
		location string
		want     string
	}{
		{target.URL + "/landing?token=" + faultToken, target.URL + "/landing?REDACTED"},
		{"/relative/path?token=" + faultToken, "/relative/path?REDACTED"},
		{strings.Replace(target.URL, "http://", "http://user:"+faultToken+"@", 1) + "/x", target.URL + "/x"},
		{target.URL + "/plain", target.URL + "/plain"},
	} {
		srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Location", tc.location)
			w.WriteHeader(http.StatusFound)
		}), false, false)
		res := post(context.Background(), openClient(faultTimeout, nil), request{url: withToken(srv.URL), body: []byte(`{}`), secret: []byte("s"), userAgent: "t"}, faultTimeout, faultLimit)
		if want := "HTTP 302 redirect to " + tc.want + " not followed"; res.Error != want || res.ErrorClass != ClassHTTP || res.Status != http.StatusFound {
			t.Errorf("Location %q: status %d, class %q, error %q; want 302, http, %q", tc.location, res.Status, res.ErrorClass, res.Error, want)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the redirect target got %d requests, want none", n)
	}
}

// TestFailureClassesAreRetried: whatever the class of a failure without a
// response (status 0), Next schedules another attempt while attempts
// remain and gives up, exhausted, after the last.
func TestFailureClassesAreRetried(t *testing.T) {
	now := time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)
	for _, class := range []string{ClassTimeout, ClassDNS, ClassConnect, ClassTLS, ClassHTTP, ClassBlocked} {
		for attempt := 1; attempt < len(faultSchedule); attempt++ {
			want := Decision{Outcome: Retry, State: journal.Pending, NextAttemptAt: now.Add(faultSchedule[attempt])}
			if got := Next(Attempted{Attempt: attempt, Trigger: journal.TriggerAuto}, faultSchedule, now); got != want {
				t.Errorf("%s failure on attempt %d: Next = %+v, want %+v", class, attempt, got, want)
			}
		}
		if got, want := Next(Attempted{Attempt: len(faultSchedule), Trigger: journal.TriggerAuto}, faultSchedule, now), (Decision{Outcome: Failed, State: journal.Failed, Exhausted: true}); got != want {
			t.Errorf("%s failure on the last attempt: Next = %+v, want %+v", class, got, want)
		}
	}
}

// TestClassifyContextErrors: a deadline anywhere in the chain is a
// timeout, whatever else the error says; an HTTP answer to the TLS
// handshake is tls, whichever part reports it.
func TestClassifyContextErrors(t *testing.T) {
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	past := time.Now().Add(-time.Second)
	for _, tc := range []struct {
		name     string
		err      error
		ctx      context.Context
		deadline time.Time
		want     string
	}{
		{"deadline", context.DeadlineExceeded, context.Background(), time.Time{}, ClassTimeout},
		{"wrapped deadline", errors.Join(errors.New("read"), context.DeadlineExceeded), context.Background(), time.Time{}, ClassTimeout},
		{"any error after the attempt's context expired", io.ErrUnexpectedEOF, expired, time.Time{}, ClassTimeout},
		{"any error after the attempt's deadline", io.ErrUnexpectedEOF, context.Background(), past, ClassTimeout},
		{"EOF", io.EOF, context.Background(), time.Time{}, ClassHTTP},
		{"EOF before the attempt's deadline", io.EOF, context.Background(), time.Now().Add(time.Hour), ClassHTTP},
		{"HTTP answer to the TLS handshake, as net/http reports it", &url.Error{Op: "Post", URL: "https://x", Err: http.ErrSchemeMismatch}, context.Background(), time.Time{}, ClassTLS},
		{"HTTP answer to the TLS handshake, as crypto/tls reports it", &tlsError{err: tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}}, context.Background(), time.Time{}, ClassTLS},
		{"blocked wins over an expired context", &blockedError{addr: "169.254.169.254:80", reason: "metadata"}, expired, time.Time{}, ClassBlocked},
		{"blocked wins over a past deadline", &blockedError{addr: "169.254.169.254:80", reason: "metadata"}, context.Background(), past, ClassBlocked},
	} {
		if got, _ := classify(tc.err, tc.ctx, tc.deadline); got != tc.want {
			t.Errorf("%s: class %q, want %q", tc.name, got, tc.want)
		}
	}
}
