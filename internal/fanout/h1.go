package fanout

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"

	"github.com/dzdesk/dzhook/internal/rawsock"
)

// h1Transport is the HTTP/1.1 client of a subscription's direct
// connections (no proxy): the worker making an attempt writes the request
// and reads the answer on its own connection, on its own goroutine.
//
// Why not net/http's Transport: it gives every connection two goroutines
// (a writer and a reader) and hands each request and its answer between
// them and the caller over channels. On a small virtual machine each
// hand-over to a sleeping goroutine is a thread wake, and at a helpdesk's
// usual rates (an event at a time) those wakes, not the HTTP work, are
// most of what an event costs: a paced loop of 600-byte POSTs measured
// 3.2 s of CPU per 10,000 requests through net/http against 2.4 s with the
// request written and the answer read by the caller, and 0.77 against
// 0.39 s back to back (BENCHMARKS.md, "Issue 17"). The HTTP itself is
// still the standard library's: http.Request.Write and http.ReadResponse.
//
// What net/http's Transport did that this one does too: keep-alive with
// at most maxIdle idle connections per receiver, closed after idleTimeout;
// a connection is reused only when its answer was read to the end and
// neither side asked to close, and only once a look at it shows the
// receiver has neither closed it nor sent anything unasked while it was
// idle; a request none of which could be written on a reused connection
// is sent once more on a new one, and, as net/http does for a POST,
// never one that was written (the receiver may have acted on it: the
// journal's retry schedule decides); header values with control
// characters are refused; 1xx answers are skipped (five at most); the
// attempt's context bounds everything (its deadline, and its
// cancellation at shutdown). A receiver that chooses HTTP/2 in the TLS
// handshake is handed, with that connection, to net/http's Transport
// (h2), which then serves every request to it.
type h1Transport struct {
	dial        dialFunc // plain connections: the egress guard's dialer
	dialTLS     dialFunc // tlsDialer: verified, failures classed tls
	h2          *http.Transport
	maxIdle     int
	idleTimeout time.Duration

	mu      sync.Mutex
	idle    map[string][]*h1Conn // by scheme://host:port, most recent last
	h2Hosts map[string]bool      // receivers that chose HTTP/2
	pending map[string]net.Conn  // an HTTP/2 connection on its way to h2, by host:port
	sweep   *time.Timer          // closes connections idle too long; nil when none are idle
	sweeps  uint64               // counts the sweeps scheduled: a fired one that is not the latest does not schedule another

	last atomic.Pointer[h1Target] // the target of the last URL asked for
}

// h1Conn is one connection and its buffers.
type h1Conn struct {
	key  string
	conn net.Conn
	raw  syscall.RawConn // the socket under conn, for the liveness check; nil if unknown
	// peekFD, bound once, looks at the socket for peek, which finds what
	// it saw in peeked, peekN and peekErr: a callback made per look, with
	// its results, took three allocations per attempt.
	peekFD  func(fd uintptr) bool
	peeked  []byte // unaskedQuote bytes; tlsPeek under TLS, to see whole records
	peekN   int
	peekErr error
	cr      countingReader
	cw      countingWriter
	br      *bufio.Reader
	bw      *bufio.Writer
	body    fixedBody // the body of the answer last read by leanAnswer
	idleAt  time.Time

	// The cancellation that ends the connection's exchange at once (a
	// past deadline): one registration per connection and context's
	// Done channel (the deliverer's lifetime, mostly), not one per
	// attempt, whose making and undoing under the context's lock were a
	// thirtieth of dzhook's CPU at catch-up. watched is that channel
	// (nil: none), unwatch undoes the registration; a callback of an
	// earlier one that has already started acts only while gen is still
	// its own (mu).
	watched <-chan struct{}
	unwatch func() bool
	mu      sync.Mutex
	gen     uint64
}

// afterFunc is context.AfterFunc; tests count the registrations.
var afterFunc = context.AfterFunc

// watch makes ctx's cancellation end c's exchange (its I/O fails at
// once), unless it already does. The caller owns c.
func (c *h1Conn) watch(ctx context.Context) {
	done := ctx.Done()
	if done == c.watched {
		return
	}
	c.stopWatching()
	if done == nil { // never cancelled
		return
	}
	c.mu.Lock()
	gen := c.gen
	c.mu.Unlock()
	c.watched = done
	c.unwatch = afterFunc(ctx, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.gen == gen {
			_ = c.conn.SetDeadline(time.Unix(1, 0))
		}
	})
}

// stopWatching undoes watch: no earlier registration touches c after it
// returns (the deadline a callback already running would set is set
// under mu, before gen moves on, so the caller's next SetDeadline wins).
func (c *h1Conn) stopWatching() {
	if c.unwatch == nil {
		return
	}
	c.unwatch()
	c.unwatch, c.watched = nil, nil
	c.mu.Lock()
	c.gen++
	c.mu.Unlock()
}

// unwatchEnded ends the watch of an idle connection whose context has
// ended, and the past deadline its callback set: the connection can be
// looked at (open) and serve another context.
func (c *h1Conn) unwatchEnded() {
	if c.watched == nil {
		return
	}
	select {
	case <-c.watched:
		c.stopWatching()
		_ = c.conn.SetDeadline(time.Time{})
	default:
	}
}

// close closes c's connection and ends its watch: a connection closed
// leaves no registration on a context that lives on.
func (c *h1Conn) close() error {
	c.stopWatching()
	return c.conn.Close()
}

// countingReader counts what the answer's reader took from the
// connection since the request was sent (nothing means no answer began),
// and refuses to read past limit while limit is set (the answer's head).
type countingReader struct {
	r     io.Reader
	n     int64
	limit int64
}

// maxAnswerHead bounds an answer's status line and headers, 1xx answers
// included: a receiver's head over 1 MB is broken or hostile, and each
// worker would buffer it (net/http's own bound is 10 MB).
const maxAnswerHead = 1 << 20

var errHeadTooLarge = errors.New("the answer's headers are larger than 1 MB")

func (c *countingReader) Read(p []byte) (int, error) {
	if c.limit > 0 {
		if c.n >= c.limit {
			return 0, errHeadTooLarge
		}
		p = p[:min(int64(len(p)), c.limit-c.n)]
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// countingWriter counts what reached the connection of the request.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func newH1Transport(dial, dialTLS dialFunc, h2 *http.Transport, maxIdle int, idleTimeout time.Duration) *h1Transport {
	t := &h1Transport{dial: dial, dialTLS: dialTLS, h2: h2, maxIdle: max(maxIdle, 1), idleTimeout: idleTimeout,
		idle: map[string][]*h1Conn{}, h2Hosts: map[string]bool{}, pending: map[string]net.Conn{}}
	// h2's connections to a receiver that chose HTTP/2: the one whose
	// handshake said so first (no second handshake), then its own.
	h2.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		t.mu.Lock()
		c := t.pending[addr]
		delete(t.pending, addr)
		t.mu.Unlock()
		if c != nil {
			return c, nil
		}
		return dialTLS(ctx, network, addr)
	}
	return t
}

// h1Target is a receiver's URL parsed, with what the transport derives
// from it: the last one is kept (target), so that a subscription's
// attempts parse their URL once, not once each.
type h1Target struct {
	raw  string   // the URL as configured
	url  *url.URL // shared by every request to it: read, never written
	host string   // the Host header: the URL's host without an empty port
	addr string   // host:port dialled, as h2 names it (hostPort)
	key  string   // scheme://host:port, the idle pool's key
	// auth is the Authorization header the URL's user info makes
	// ("Basic …"; "" without user info), as http.Client sends it when the
	// request has none of its own.
	auth string
	// head is what a request to the target says after its method, up to
	// its other headers: " <request-URI> HTTP/1.1\r\nHost: <host>\r\n"
	// (writeHead). "": Request.Write writes the requests, because it
	// would change the host (an IDNA name, an IPv6 zone) or refuse it.
	head string
}

// newTarget derives a target from u; an error for a scheme other than
// http and https.
func newTarget(raw string, u *url.URL) (*h1Target, error) {
	tg := &h1Target{raw: raw, url: u, host: strings.TrimSuffix(u.Host, ":")}
	switch u.Scheme {
	case "http":
		tg.addr = hostPort(u, "80")
	case "https":
		tg.addr = hostPort(u, "443")
	default:
		return nil, fmt.Errorf("unsupported scheme %q", u.Scheme)
	}
	tg.key = u.Scheme + "://" + tg.addr
	if ruri := u.RequestURI(); validHost(tg.host) && !strings.ContainsFunc(ruri, isCTL) {
		tg.head = " " + ruri + " HTTP/1.1\r\nHost: " + tg.host + "\r\n"
	}
	if u.User != nil {
		pass, _ := u.User.Password()
		tg.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass))
	}
	return tg, nil
}

// target is raw's target: the last one if it is raw's, else parsed now
// (and kept). Errors are url.Parse's (which quote the URL: the caller
// drops the quote) and newTarget's.
func (t *h1Transport) target(raw string) (*h1Target, error) {
	if tg := t.last.Load(); tg != nil && tg.raw == raw {
		return tg, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	tg, err := newTarget(raw, u)
	if err != nil {
		return nil, err
	}
	t.last.Store(tg)
	return tg, nil
}

// RoundTrip implements http.RoundTripper: do, with the request's context
// and its deadline.
func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	tg, err := newTarget("", req.URL)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	tg.head = "" // req.Host may be its own: Request.Write writes it
	ctx := req.Context()
	deadline, _ := ctx.Deadline()
	return t.do(ctx, deadline, tg, req)
}

// do sends req to tg and reads its answer's head; the answer's body is
// read within the same deadline (the connection's), and ctx's
// cancellation (shutdown) ends the exchange at once. A zero deadline is
// none. req's own context is not looked at (send makes it without one):
// every wait here is bounded by deadline and ctx.
//
// send calls do directly, not through http.Client and retryablehttp:
// with no retries of theirs and no redirects followed, what they did for
// an attempt here was a copy of its headers, a context with a timer, a
// second registration on that context and a parse of the URL, together
// about a tenth of dzhook's CPU at catch-up (BENCHMARKS.md, "Issue 17").
// What they did that matters is done here or in send: the URL's user
// info sent as Basic credentials, the idle connections closed after a
// failed attempt.
func (t *h1Transport) do(ctx context.Context, deadline time.Time, tg *h1Target, req *http.Request) (*http.Response, error) {
	if tg.url.Scheme == "https" && t.isH2(tg.key) {
		return t.viaH2(ctx, deadline, req)
	}
	if err := checkHeaders(req.Header); err != nil {
		closeBody(req)
		return nil, err
	}
	for again := true; ; again = false {
		var c *h1Conn
		reused := false
		if again { // a resend takes a new connection: the pool's may be as stale
			c, reused = t.get(tg.key)
		}
		if c == nil {
			conn, err := t.dialFor(ctx, deadline, tg)
			if err != nil {
				closeBody(req)
				return nil, err
			}
			if tc, ok := conn.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" {
				t.handOver(tg.key, tg.addr, conn)
				return t.viaH2(ctx, deadline, req)
			}
			c = newH1Conn(tg.key, conn)
		}
		resp, err := t.exchange(ctx, deadline, c, req, tg.head)
		if err == nil {
			return resp, nil
		}
		c.close()
		// A reused connection that took none of the request (closed by
		// the receiver after the look at it in get) gets it again on a
		// new one. Once any of it was written the failure is the
		// attempt's, as net/http has it for a POST: the receiver may
		// have read it all and acted on it before it hung up.
		if again && reused && c.cw.n == 0 && ctx.Err() == nil && !isTimeout(err) && req.GetBody != nil {
			body, gerr := req.GetBody()
			if gerr == nil {
				r := req.Clone(req.Context())
				r.Body = body
				req = r
				continue
			}
		}
		closeBody(req)
		return nil, err
	}
}

// viaH2 sends req through h2 (a receiver that chose HTTP/2), under a
// context with the deadline, which ends when the answer's body is closed.
func (t *h1Transport) viaH2(ctx context.Context, deadline time.Time, req *http.Request) (*http.Response, error) {
	if deadline.IsZero() {
		return stagedRoundTrip(t.h2, req.WithContext(ctx))
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	resp, err := stagedRoundTrip(t.h2, req.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelBody is an answer's body whose context ends when it is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// earlyAnswerWait is how long an answer is looked for after the request
// could not be written whole (exchange).
const earlyAnswerWait = 200 * time.Millisecond

// exchange sends req on c and reads its answer's head; head is its
// target's (writeHead), "" to send it with Request.Write.
func (t *h1Transport) exchange(ctx context.Context, deadline time.Time, c *h1Conn, req *http.Request, head string) (*http.Response, error) {
	c.watch(ctx)
	hasDeadline := !deadline.IsZero()
	if hasDeadline {
		_ = c.conn.SetDeadline(deadline)
	}
	if err := ctx.Err(); err != nil { // cancelled before the deadline above was set
		return nil, err
	}
	fail := func(what string, err error) (*http.Response, error) {
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case hasDeadline && isTimeout(err) && !time.Now().Before(deadline):
			return nil, context.DeadlineExceeded
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	c.cr.n, c.cw.n = 0, 0
	sendErr := writeRequest(c.bw, req, head)
	if sendErr == nil {
		sendErr = c.bw.Flush()
	}
	if sendErr != nil {
		if ctx.Err() != nil {
			return fail("sending the request", sendErr)
		}
		// The receiver may have answered before it stopped reading: a
		// 413 for a body over its limit, then a close (a broken pipe
		// here), or an early 401 with the body left unread (the write
		// then waits out the deadline). Its answer is the attempt's
		// outcome, as net/http reports it; the connection is not reused.
		// It is read for earlyAnswerWait at most, past the deadline only
		// when the write took all of it.
		_ = c.conn.SetReadDeadline(time.Now().Add(earlyAnswerWait))
	}
	var resp *http.Response
	c.cr.limit = maxAnswerHead
	for informational := 0; ; informational++ {
		var err error
		resp, err = readAnswer(c.br, req, &c.body)
		if err != nil {
			c.cr.limit = 0
			if sendErr != nil {
				return fail("sending the request", sendErr)
			}
			if c.cr.n == 0 && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
				err = errors.New("connection closed before an answer (EOF)")
			}
			return fail("reading the answer", err)
		}
		if resp.StatusCode < 100 || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// 100 Continue, 103 Early Hints: the answer follows (after five,
		// the receiver is not answering).
		if informational == 5 {
			c.cr.limit = 0
			return fail("reading the answer", errors.New("more than five 1xx answers"))
		}
		_, _ = io.Copy(io.Discard, resp.Body)
	}
	if sendErr != nil {
		resp.Close = true // the request was cut short: not reused
		// The body's read gets what is left of the attempt's time, and
		// earlyAnswerWait if the write took all of it.
		until := time.Time{}
		if hasDeadline {
			until = time.Now().Add(earlyAnswerWait)
			if deadline.After(until) {
				until = deadline
			}
		}
		_ = c.conn.SetReadDeadline(until)
	}
	c.cr.limit = 0 // the body is bounded by its reader (response_body_limit)
	resp.Body = &h1Body{rc: resp.Body, t: t, c: c, ctx: ctx, eof: resp.Body == http.NoBody,
		keep: !resp.Close && !req.Close && resp.StatusCode != http.StatusSwitchingProtocols &&
			// A subscription's own "Connection: close" header: the
			// receiver may close without saying so in its answer.
			!httpguts.HeaderValuesContainsToken(req.Header["Connection"], "close")}
	return resp, nil
}

// writeRequest writes req as Request.Write does, byte for byte; for a
// request send made (a POST, PUT or PATCH of a known length, no Close,
// no trailer), with its target's head, without Request.Write's costs: a transfer writer, a
// sorter, fmt, and an interface conversion per header value, together
// about a twentieth of dzhook's CPU at catch-up.
func writeRequest(w *bufio.Writer, req *http.Request, head string) error {
	switch req.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch: // always a Content-Length (writeHead)
	default:
		return req.Write(w)
	}
	if head == "" || req.ContentLength < 0 || req.Close || req.Trailer != nil || len(req.TransferEncoding) > 0 || req.Body == nil {
		return req.Write(w)
	}
	defer closeBody(req)
	writeHead(w, req.Method, head, req.Header, req.ContentLength)
	if req.ContentLength > 0 {
		n, err := io.Copy(w, req.Body)
		if err != nil {
			return err
		}
		if n != req.ContentLength {
			return fmt.Errorf("http: ContentLength=%d with Body length %d", req.ContentLength, n)
		}
	}
	return nil
}

// writeHead writes a request's head as Request.Write does: the request
// line and Host (head), User-Agent (Go's own when the header has none; not
// at all when it is empty), Content-Length (a POST, PUT or PATCH has one
// even when it is 0), then the other headers sorted by name, their
// values trimmed and without line breaks. Errors are the writer's, which
// keeps the first (bufio).
func writeHead(w *bufio.Writer, method, head string, h http.Header, length int64) {
	_, _ = w.WriteString(method)
	_, _ = w.WriteString(head)
	ua := "Go-http-client/1.1"
	if vs, ok := h["User-Agent"]; ok {
		ua = ""
		if len(vs) > 0 {
			ua = vs[0]
		}
	}
	if ua != "" { // a value of blanks is still written, blank
		writeField(w, "User-Agent", headerValue(ua))
	}
	_, _ = w.WriteString("Content-Length: ")
	_, _ = w.Write(strconv.AppendInt(w.AvailableBuffer(), length, 10)) // no copy, no allocation
	_, _ = w.WriteString("\r\n")
	var keys [16]string
	sorted := keys[:0]
	for k := range h {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		if httpguts.ValidHeaderFieldName(k) { // Request.Write drops the others
			sorted = append(sorted, k)
		}
	}
	slices.Sort(sorted)
	for _, k := range sorted {
		for _, v := range h[k] {
			writeField(w, k, headerValue(v))
		}
	}
	_, _ = w.WriteString("\r\n")
}

func writeField(w *bufio.Writer, k, v string) {
	_, _ = w.WriteString(k)
	_, _ = w.WriteString(": ")
	_, _ = w.WriteString(v)
	_, _ = w.WriteString("\r\n")
}

// headerValue is v as Request.Write sends it: line breaks become spaces,
// and the ends are trimmed of spaces and tabs.
func headerValue(v string) string {
	if strings.ContainsAny(v, "\r\n") {
		v = strings.NewReplacer("\n", " ", "\r", " ").Replace(v)
	}
	return textproto.TrimString(v)
}

// validHost reports whether Request.Write sends host as it is: ASCII
// (not an IDNA name it would rewrite), a valid Host header (or it sends
// none), without an IPv6 zone (which it removes).
func validHost(host string) bool {
	for i := 0; i < len(host); i++ {
		if host[i] >= utf8.RuneSelf {
			return false
		}
	}
	return httpguts.ValidHostHeader(host) && !strings.Contains(host, "%")
}

// isCTL reports an ASCII control character, which Request.Write refuses
// in a request's URI.
func isCTL(r rune) bool { return r < ' ' || r == 0x7f }

// h1Body is an answer's body: at its end, read whole and with keep-alive
// on both sides, the connection goes back to the idle pool; otherwise it
// is closed (reading on to the end of a large or slow body could take the
// whole timeout).
type h1Body struct {
	rc     io.ReadCloser
	t      *h1Transport
	c      *h1Conn
	ctx    context.Context // the attempt's: cancelled, the connection is not kept
	eof    bool
	keep   bool
	closed bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.closed {
		return 0, errors.New("read on a closed body")
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *h1Body) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	notCancelled := b.ctx.Err() == nil
	if b.eof && b.keep && notCancelled {
		_ = b.rc.Close() // at EOF: reads nothing more
		if b.c.conn.SetDeadline(time.Time{}) == nil {
			b.t.put(b.c)
			return nil
		}
	}
	return b.c.close()
}

func newH1Conn(key string, conn net.Conn) *h1Conn {
	c := &h1Conn{key: key, conn: conn, peeked: make([]byte, unaskedQuote)}
	raw := conn
	if tc, ok := conn.(*tls.Conn); ok {
		raw = tc.NetConn()
		c.peeked = make([]byte, tlsPeek)
	}
	if sc, ok := raw.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			c.raw = rc
			c.peekFD = func(fd uintptr) bool {
				c.peekN, c.peekErr = rawsock.Peek(fd, c.peeked)
				return true
			}
		}
	}
	c.cr.r, c.cw.w = conn, conn
	c.br = bufio.NewReaderSize(&c.cr, 4096)
	c.bw = bufio.NewWriterSize(&c.cw, 4096)
	return c
}

// dialFor dials tg (and makes the TLS handshake for https) by deadline.
// An error carries the stage it ended in (stage.go).
func (t *h1Transport) dialFor(ctx context.Context, deadline time.Time, tg *h1Target) (net.Conn, error) {
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	ctx, st := withStage(ctx)
	dial := t.dial
	if tg.url.Scheme == "https" {
		dial = t.dialTLS
	}
	conn, err := dial(ctx, "tcp", tg.addr)
	if err != nil {
		return nil, st.wrap(err)
	}
	return conn, nil
}

// get takes the most recently used idle connection to key that is still
// open; nil if there is none.
func (t *h1Transport) get(key string) (*h1Conn, bool) {
	now := time.Now()
	for {
		t.mu.Lock()
		list := t.idle[key]
		if len(list) == 0 {
			t.mu.Unlock()
			return nil, false
		}
		c := list[len(list)-1]
		list[len(list)-1] = nil
		t.idle[key] = list[:len(list)-1]
		t.mu.Unlock()
		c.unwatchEnded()
		if now.Sub(c.idleAt) < t.idleTimeout && c.open() {
			return c, true
		}
		c.close()
	}
}

// open reports whether an idle connection can carry a request: the
// receiver has neither closed it nor sent anything unasked (a server's
// "408 Request Timeout" before it closes). What is already read (our
// buffer; under TLS, what crypto/tls read ahead) is looked at first, then
// the socket, with one non-blocking peek. Under TLS, bytes on the socket
// may also be a session ticket or a key update, which carry no data:
// those are read through TLS for a moment (tlsRead) to tell them from a
// close_notify or an answer.
func (c *h1Conn) open() bool {
	if n := c.br.Buffered(); n > 0 { // bytes after the last answer
		b, _ := c.br.Peek(min(n, unaskedQuote))
		unasked(b)
		return false
	}
	tc, isTLS := c.conn.(*tls.Conn)
	// A deadline already past: crypto/tls hands over what it holds and
	// times out before any system call.
	if isTLS && !tlsRead(tc, time.Unix(1, 0)) {
		return false
	}
	pending, ok := c.peek()
	switch {
	case !ok:
		return false // reset, or closed
	case len(pending) == 0:
		return true
	case !isTLS:
		unasked(pending)
		return false
	}
	// Only whole records are read through TLS, and only those: of a
	// record cut short (an unasked answer half arrived), the probe would
	// take the part that came into crypto/tls's buffer and time out, the
	// socket would look empty, and the rest would be read as the next
	// attempt's answer.
	whole, ok := wholeRecords(pending)
	sock, counted := tc.NetConn().(*tlsSocket)
	if !ok || !counted {
		return false
	}
	before := sock.read.Load()
	if !tlsRead(tc, time.Now().Add(tlsProbe)) {
		return false
	}
	if sock.read.Load()-before != int64(whole) {
		return false // more came meanwhile, maybe not whole
	}
	// Still bytes on the socket: the probe did not get to read them (a
	// paused goroutine). Not worth keeping.
	pending, ok = c.peek()
	return ok && len(pending) == 0
}

// tlsPeek is how much of an idle TLS connection's socket the liveness
// check looks at: a session ticket or a key update and then some; more
// than that pending is not worth keeping the connection for.
const tlsPeek = 2048

// wholeRecords is the length of the whole TLS records b starts with, and
// whether b is nothing but whole records (a record: a 5-byte header
// whose last two bytes are the length of what follows).
func wholeRecords(b []byte) (n int, ok bool) {
	for n < len(b) {
		if len(b)-n < 5 {
			return n, false
		}
		size := 5 + (int(b[n+3])<<8 | int(b[n+4]))
		if len(b)-n < size {
			return n, false
		}
		n += size
	}
	return n, true
}

// tlsSocket is the connection under a TLS one (tlsDialer), counting what
// crypto/tls reads from it: the liveness check (h1Conn.open) holds its
// probe to the whole records it saw on the socket.
type tlsSocket struct {
	net.Conn
	read atomic.Int64
}

func (s *tlsSocket) Read(p []byte) (int, error) {
	n, err := s.Conn.Read(p)
	s.read.Add(int64(n))
	return n, err
}

// SyscallConn is the socket's, for the liveness check's peek.
func (s *tlsSocket) SyscallConn() (syscall.RawConn, error) {
	sc, ok := s.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("not a socket")
	}
	return sc.SyscallConn()
}

// peek looks at the socket without reading it and without waiting: what
// is there (up to unaskedQuote bytes), and ok false if it is closed or
// reset. A connection that is not a socket has nothing to show.
func (c *h1Conn) peek() (pending []byte, ok bool) {
	if c.raw == nil {
		return nil, true
	}
	if err := c.raw.Read(c.peekFD); err != nil {
		return nil, false // a socket that cannot be looked at is not worth keeping
	}
	switch n, err := c.peekN, c.peekErr; {
	case err == syscall.EAGAIN || err == syscall.EINTR:
		return nil, true
	case err != nil, n == 0:
		return nil, false
	default:
		return c.peeked[:n], true
	}
}

// unaskedQuote is how much of what a receiver sent unasked is quoted.
const unaskedQuote = 32

// unasked reports bytes a receiver sent on an idle connection: to the
// standard log, in net/http's Transport's words, as it does for the
// connections it keeps (proxied subscriptions, HTTP/2 receivers); `dzhook
// run` routes the standard log through its structured log, rate-limited
// per kind of line (cmd/dzhook/stdlog.go), so both transports' lines are
// one kind there and a receiver cannot flood the log.
func unasked(b []byte) {
	log.Printf("Unsolicited response received on idle HTTP channel starting with %q; err=<nil>", b)
}

// tlsProbe is how long tlsRead waits for a record that began to arrive.
const tlsProbe = 5 * time.Millisecond

// tlsRead reads an idle TLS connection until deadline: records without
// data (a session ticket, a key update) are taken in by crypto/tls and
// the read times out, and the connection can go on; data or a close
// (close_notify, EOF) cannot. A read timeout leaves a tls.Conn usable
// (crypto/tls keeps a partial record for the next read).
func tlsRead(tc *tls.Conn, deadline time.Time) bool {
	if tc.SetReadDeadline(deadline) != nil {
		return false
	}
	var b [unaskedQuote]byte
	n, err := tc.Read(b[:])
	if n > 0 {
		unasked(b[:n])
		return false
	}
	if !isTimeout(err) {
		return false
	}
	return tc.SetReadDeadline(time.Time{}) == nil
}

// put returns c to the idle pool, or closes it when the pool is full.
func (t *h1Transport) put(c *h1Conn) {
	c.idleAt = time.Now()
	t.mu.Lock()
	list := t.idle[c.key]
	if len(list) >= t.maxIdle {
		t.mu.Unlock()
		c.close()
		return
	}
	t.idle[c.key] = append(list, c)
	if t.sweep == nil {
		t.scheduleSweep()
	}
	t.mu.Unlock()
}

// scheduleSweep makes the next sweep, in idleTimeout. t.mu is held.
func (t *h1Transport) scheduleSweep() {
	t.sweeps++
	n := t.sweeps
	t.sweep = time.AfterFunc(t.idleTimeout, func() { t.closeExpired(n) })
}

// closeExpired, the sweep numbered n, closes the connections idle for
// idleTimeout, and comes back while any are left, unless it is no longer
// the latest sweep: CloseIdleConnections can stop it as it fires, and a
// put after that schedules another, which goes on alone.
func (t *h1Transport) closeExpired(n uint64) {
	now := time.Now()
	var expired []*h1Conn
	t.mu.Lock()
	left := 0
	for key, list := range t.idle {
		kept := list[:0]
		for _, c := range list {
			if now.Sub(c.idleAt) >= t.idleTimeout {
				expired = append(expired, c)
			} else {
				kept = append(kept, c)
			}
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(t.idle, key)
		} else {
			t.idle[key] = kept
		}
		left += len(kept)
	}
	switch {
	case n != t.sweeps: // not the latest: that one goes on
	case left > 0:
		t.scheduleSweep()
	default:
		t.sweep = nil
	}
	t.mu.Unlock()
	for _, c := range expired {
		c.close()
	}
}

// CloseIdleConnections closes every idle connection (http.Client calls it;
// retryablehttp after a failed request).
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[string][]*h1Conn{}
	pending := t.pending
	t.pending = map[string]net.Conn{}
	if t.sweep != nil {
		t.sweep.Stop()
		t.sweep = nil
	}
	t.mu.Unlock()
	for _, list := range idle {
		for _, c := range list {
			c.close()
		}
	}
	for _, c := range pending {
		c.Close()
	}
	t.h2.CloseIdleConnections()
}

func (t *h1Transport) isH2(key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.h2Hosts[key]
}

// handOver gives h2 a receiver that chose HTTP/2, with the connection it
// chose it on. Only the first: once h2 serves the receiver it shares its
// own connection between requests, and would never take another.
func (t *h1Transport) handOver(key, addr string, conn net.Conn) {
	t.mu.Lock()
	first := !t.h2Hosts[key]
	t.h2Hosts[key] = true
	if first {
		t.pending[addr] = conn
	}
	t.mu.Unlock()
	if !first {
		conn.Close()
	}
}

// hostPort is the request's host:port, with the scheme's port if the URL
// has none: as net/http's Transport names it to DialTLSContext (the host
// as written), so that h2 finds a handed-over connection.
func hostPort(u *url.URL, port string) string {
	if p := u.Port(); p != "" {
		port = p
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// checkHeaders refuses what net/http's Transport refuses (header names
// that are not tokens, values with control characters other than tab):
// Request.Write would send them as they are. Configuration refuses them
// at load already; this guards the headers dzhook adds itself. The error
// names the header, never its value (it may be a credential).
func checkHeaders(h http.Header) error {
	for k, vs := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("invalid header name %q", k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("invalid value for header %s: control characters", k)
			}
		}
	}
	return nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}
