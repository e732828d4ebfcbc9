package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/dzdesk/dzhook/signer"
)

// receiverKind is the receiver's HTTP server (-receiver): "lean", the
// bench's own HTTP/1.1 loop, or "net/http", the standard library's
// server, which the figures before the eleventh stop of issue 17 used.
// Both verify every signature and note every arrival the same way; the
// lean one costs the machine about two thirds of net/http's CPU per
// request (0.16-0.19 s per 10,000 against 0.24-0.29 during a catch-up),
// CPU that on this two-core machine dzhook and PostgreSQL share with it.
var receiverKind = "lean"

// receiverKinds are the values -receiver takes.
var receiverKinds = []string{"lean", "net/http"}

// receiver is the benchmark's webhook endpoint: it verifies each
// signature, notes when each delivery first arrived, and answers 200
// (after service, when set); a path under /hang/ never answers.
type receiver struct {
	url     string
	service time.Duration
	srv     *http.Server // receiverKind "net/http"
	ln      net.Listener // receiverKind "lean"
	total   atomic.Int64

	connMu sync.Mutex
	conns  map[net.Conn]struct{} // lean: open connections, closed by close
	closed bool

	mu      sync.Mutex
	first   map[string]time.Time // X-DZDESK-Delivery → first arrival
	byReq   map[string]time.Time // path + request id → first arrival
	target  int
	reached chan struct{}
	bad     atomic.Int64

	// With ordered set (expectOrdered), each first arrival's title "#<n>"
	// is compared with the last one seen of its request: a lower n is an
	// arrival out of commit order.
	ordered    bool
	lastSeq    map[string]int64
	outOfOrder int
}

func newReceiver() (*receiver, error) { return serveReceiver(0) }

// slowReceiver is the benchmark's receiver answering after service: every
// request takes that long, signature verified as usual.
func slowReceiver(service time.Duration) (*receiver, error) { return serveReceiver(service) }

func serveReceiver(service time.Duration) (*receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rc := &receiver{url: "http://" + ln.Addr().String(), service: service, first: map[string]time.Time{}, byReq: map[string]time.Time{}}
	switch receiverKind {
	case "net/http":
		rc.srv = &http.Server{Handler: rc, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = rc.srv.Serve(ln) }()
	default:
		rc.ln, rc.conns = ln, map[net.Conn]struct{}{}
		go rc.acceptLoop()
	}
	return rc, nil
}

// close stops the receiver: its listener and every open connection (a
// hung request's too).
func (rc *receiver) close() {
	if rc.srv != nil {
		_ = rc.srv.Close()
		return
	}
	_ = rc.ln.Close()
	rc.connMu.Lock()
	rc.closed = true
	for c := range rc.conns {
		_ = c.Close()
	}
	rc.connMu.Unlock()
}

func (rc *receiver) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := rc.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, a connection aborted before it was
			// taken: wait and go on, as net/http's server does, rather
			// than leave later connections in the backlog.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		rc.connMu.Lock()
		if rc.closed {
			rc.connMu.Unlock()
			_ = c.Close()
			return
		}
		rc.conns[c] = struct{}{}
		rc.connMu.Unlock()
		go func() {
			rc.serveConn(c)
			rc.connMu.Lock()
			delete(rc.conns, c)
			rc.connMu.Unlock()
			_ = c.Close()
		}()
	}
}

// maxBody bounds a request's body: the bench sends at most a few KiB.
const maxBody = 1 << 20

var (
	answerOK                = []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	answerOKClose           = []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	answerUnauthorized      = []byte("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
	answerUnauthorizedClose = []byte("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	answerContinue          = []byte("HTTP/1.1 100 Continue\r\n\r\n")
)

// benchRequest is what the lean receiver reads of a request.
type benchRequest struct {
	path, signature, delivery string
	length                    int
	close                     bool
	expectContinue            bool // Expect: 100-continue: the client waits for a 100 before its body
}

// serveConn answers one connection's requests in turn (HTTP/1.1
// keep-alive, Content-Length bodies: what dzhook and the bench's clients
// send) until it closes or sends something else, which gets a 4xx or
// 501 naming it.
func (rc *receiver) serveConn(c net.Conn) {
	br := bufio.NewReaderSize(c, 16<<10)
	var body []byte
	for {
		req, err := readBenchRequest(br)
		if err != nil {
			var status *statusError
			if errors.As(err, &status) {
				refuse(c, status)
			}
			return
		}
		now := time.Now()
		if req.expectContinue {
			if _, err := c.Write(answerContinue); err != nil {
				return
			}
		}
		if cap(body) < req.length {
			body = make([]byte, req.length)
		}
		body = body[:req.length]
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		if strings.HasPrefix(req.path, "/hang/") {
			_, _ = io.Copy(io.Discard, br) // until the client or close ends it
			return
		}
		if rc.service > 0 {
			time.Sleep(rc.service) // the receiver's service time, which the scaleout scenario is about
		}
		verified := rc.take(req.path, req.signature, req.delivery, body, now) == http.StatusOK
		var answer []byte
		switch {
		case verified && req.close:
			answer = answerOKClose
		case verified:
			answer = answerOK
		case req.close:
			answer = answerUnauthorizedClose
		default:
			answer = answerUnauthorized
		}
		if _, err := c.Write(answer); err != nil || req.close {
			return
		}
	}
}

// refuse answers a request the receiver does not read, naming why, and
// ends the connection. What the client still sends (the refused
// request's body) is read and dropped for a moment first, as net/http
// does: closing with unread data would reset the connection, and the
// client would see the reset instead of the answer.
func refuse(c net.Conn, status *statusError) {
	if _, err := fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status.code, http.StatusText(status.code), len(status.msg), status.msg); err != nil {
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 4*maxBody))
}

// statusError is a request the lean receiver refuses: its status and why.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return fmt.Sprintf("%d: %s", e.code, e.msg) }

// readBenchRequest reads a request's line and headers from br.
func readBenchRequest(br *bufio.Reader) (benchRequest, error) {
	var req benchRequest
	line, err := readLine(br)
	if err != nil {
		return req, err
	}
	method, rest, ok1 := bytes.Cut(line, []byte(" "))
	target, proto, ok2 := bytes.Cut(rest, []byte(" "))
	if !ok1 || !ok2 || len(target) == 0 || target[0] != '/' {
		return req, &statusError{http.StatusBadRequest, fmt.Sprintf("malformed request line %q", line)}
	}
	switch string(proto) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		req.close = true
	default:
		return req, &statusError{http.StatusHTTPVersionNotSupported, fmt.Sprintf("protocol %q: HTTP/1.1 only", proto)}
	}
	if string(method) != http.MethodPost {
		return req, &statusError{http.StatusMethodNotAllowed, fmt.Sprintf("method %q: POST only", method)}
	}
	if i := bytes.IndexByte(target, '?'); i >= 0 {
		target = target[:i]
	}
	req.path = string(target)
	req.length = -1
	for {
		line, err := readLine(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return req, err
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return req, &statusError{http.StatusBadRequest, fmt.Sprintf("malformed header line %q", line)}
		}
		value = bytes.TrimSpace(value)
		switch {
		case fold(name, "Content-Length"):
			n, err := strconv.Atoi(string(value))
			if err != nil || n < 0 || req.length >= 0 {
				return req, &statusError{http.StatusBadRequest, fmt.Sprintf("Content-Length %q", value)}
			}
			if n > maxBody {
				return req, &statusError{http.StatusRequestEntityTooLarge, fmt.Sprintf("Content-Length %d: at most %d", n, maxBody)}
			}
			req.length = n
		case fold(name, "Transfer-Encoding"):
			return req, &statusError{http.StatusNotImplemented, fmt.Sprintf("Transfer-Encoding %q: Content-Length bodies only", value)}
		case fold(name, "Connection"):
			req.close = req.close || httpguts.HeaderValuesContainsToken([]string{string(value)}, "close")
		case fold(name, "Expect"):
			if !fold(value, "100-continue") {
				return req, &statusError{http.StatusExpectationFailed, fmt.Sprintf("Expect %q: 100-continue only", value)}
			}
			req.expectContinue = true
		case fold(name, signer.HeaderSignature):
			req.signature = string(value)
		case fold(name, signer.HeaderDelivery):
			req.delivery = string(value)
		}
	}
	if req.length < 0 {
		return req, &statusError{http.StatusLengthRequired, "no Content-Length"}
	}
	return req, nil
}

// readLine is one CRLF- (or LF-) ended line without its end.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, &statusError{http.StatusRequestHeaderFieldsTooLarge, "a request or header line longer than 16 KiB"}
	}
	if err != nil {
		if len(line) > 0 && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// fold is b == s, case ignored (a header's name or token).
func fold(b []byte, s string) bool { return strings.EqualFold(string(b), s) }

// expect resets the receiver to wait for n distinct deliveries.
func (rc *receiver) expect(n int) <-chan struct{} {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.first, rc.byReq = map[string]time.Time{}, map[string]time.Time{}
	rc.target, rc.reached = n, make(chan struct{})
	rc.total.Store(0)
	rc.ordered, rc.lastSeq, rc.outOfOrder = false, nil, 0
	return rc.reached
}

// expectOrdered is expect, also counting arrivals out of each request's
// commit order (see receiver.ordered).
func (rc *receiver) expectOrdered(n int) <-chan struct{} {
	reached := rc.expect(n)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.ordered, rc.lastSeq = true, map[string]int64{}
	return reached
}

// misordered is how many first arrivals came before a later delivery of
// their request had arrived.
func (rc *receiver) misordered() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.outOfOrder
}

var (
	dataID  = []byte(`"data":{"id":"`)
	titleNo = []byte(`"title":"#`)
)

// seqOf reads n from the payload's "title":"#<n>" (-1: none).
func seqOf(body []byte) int64 {
	i := bytes.Index(body, titleNo)
	if i < 0 {
		return -1
	}
	n, ok := int64(0), false
	for _, c := range body[i+len(titleNo):] {
		if c < '0' || c > '9' {
			break
		}
		n, ok = n*10+int64(c-'0'), true
	}
	if !ok {
		return -1
	}
	return n
}

// ServeHTTP is the receiver under net/http (receiverKind "net/http").
func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	body, _ := io.ReadAll(r.Body)
	if strings.HasPrefix(r.URL.Path, "/hang/") {
		<-r.Context().Done()
		return
	}
	if rc.service > 0 {
		time.Sleep(rc.service) // the receiver's service time, which the scaleout scenario is about
	}
	w.WriteHeader(rc.take(r.URL.Path, r.Header.Get(signer.HeaderSignature), r.Header.Get(signer.HeaderDelivery), body, now))
}

// take checks a request's signature and notes its arrival at now: the
// status to answer.
func (rc *receiver) take(path, signature, dlv string, body []byte, now time.Time) int {
	if signer.Verify(signature, body, []byte(benchSecret)) != nil {
		rc.bad.Add(1)
		return http.StatusUnauthorized
	}
	rc.total.Add(1)
	req := ""
	if i := bytes.Index(body, dataID); i >= 0 {
		rest := body[i+len(dataID):]
		if j := bytes.IndexByte(rest, '"'); j >= 0 {
			req = path + " " + string(rest[:j])
		}
	}
	rc.mu.Lock()
	if _, seen := rc.first[dlv]; !seen {
		rc.first[dlv] = now
		if req != "" {
			rc.byReq[req] = now
			if rc.ordered {
				if seq := seqOf(body); seq >= 0 {
					if last, ok := rc.lastSeq[req]; ok && seq < last {
						rc.outOfOrder++
					} else {
						rc.lastSeq[req] = seq
					}
				}
			}
		}
		if len(rc.first) == rc.target && rc.reached != nil {
			close(rc.reached)
		}
	}
	rc.mu.Unlock()
	return http.StatusOK
}

// received is how many distinct deliveries have arrived.
func (rc *receiver) received() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.first)
}

func (rc *receiver) arrivals() (map[string]time.Time, map[string]time.Time) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return maps(rc.first), maps(rc.byReq)
}

func maps(m map[string]time.Time) map[string]time.Time {
	out := make(map[string]time.Time, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
