package fanout

import (
	"bufio"
	"bytes"
	"io"
	"net/http"

	"golang.org/x/net/http/httpguts"
)

// readAnswer reads an answer's status line and headers from br, as
// http.ReadResponse does. The usual answer of a receiver (HTTP/1.1, a
// final status, a Content-Length, short plain headers, all in the bytes
// already read) is parsed where it lies in br's buffer by leanAnswer;
// anything else goes to http.ReadResponse, with nothing of it consumed.
//
// Why: http.ReadResponse makes a map of every header, a string of every
// name and value and a canonical form of every name, and reads the body
// through two wrappers; at a helpdesk's usual rates that parsing was a
// twentieth of what an event cost dzhook (BENCHMARKS.md, "Issue 17"),
// for an answer of which an attempt keeps the status, Retry-After and
// Location (for the history) and the body's first bytes.
func readAnswer(br *bufio.Reader, req *http.Request, body *fixedBody) (*http.Response, error) {
	if _, err := br.Peek(1); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // as http.ReadResponse reports an answer that never came
		}
		return nil, err
	}
	if resp, ok := leanAnswer(br, req, body); ok {
		return resp, nil
	}
	return http.ReadResponse(br, req)
}

// leanAnswer parses the answer at the start of br's buffer if it is one
// that http.ReadResponse reads to the same effect in every field an
// attempt uses:
//   - the status line is "HTTP/1.1 NNN reason", NNN from 200 to 599;
//   - every header line is "Name: value" with a token for a name and
//     neither control characters (but tabs) nor line folding in the value;
//   - one Content-Length, of digits, and no Transfer-Encoding; or no
//     Content-Length at all for a 204 or 304, whose body is empty;
//   - the whole head is in the buffer;
//   - the request was not a HEAD (dzhook sends none).
//
// Otherwise it returns false and consumes nothing. The Response's Header
// holds only Retry-After and Location (the first of each), the headers
// post reads, and is nil when the answer has neither (Get works on it);
// Close is set by "Connection: close", as http.ReadResponse sets it for
// HTTP/1.1. The body is body (the connection's own, reset here), which
// reads exactly Content-Length bytes from br.
func leanAnswer(br *bufio.Reader, req *http.Request, body *fixedBody) (*http.Response, bool) {
	if req != nil && req.Method == http.MethodHead {
		return nil, false // no body whatever its length says: http.ReadResponse's case
	}
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, crlfcrlf)
	if end < 0 {
		return nil, false
	}
	head := buf[:end+2] // each line with its CRLF
	line, head := cutLine(head)
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || (len(line) > 12 && line[12] != ' ') {
		return nil, false
	}
	code := 0
	for _, b := range line[9:12] {
		if b < '0' || b > '9' {
			return nil, false
		}
		code = code*10 + int(b-'0')
	}
	if code < 200 || code > 599 || !plainValue(line[12:]) {
		return nil, false
	}
	status := line[9:]
	var (
		length               int64 = -1
		closing              bool
		retryAfter, location []byte
		haveRetry, haveLoc   bool
	)
	for len(head) > 0 {
		line, head = cutLine(head)
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return nil, false // folded, malformed: http.ReadResponse decides
		}
		name, value := line[:colon], trimBlanks(line[colon+1:])
		for _, b := range name {
			if !httpguts.IsTokenRune(rune(b)) {
				return nil, false
			}
		}
		if !plainValue(value) {
			return nil, false
		}
		switch {
		case asciiEqualFold(name, "Content-Length"):
			if length >= 0 {
				return nil, false // twice: http.ReadResponse's rules for that
			}
			if length = digits(value); length < 0 {
				return nil, false
			}
		case asciiEqualFold(name, "Transfer-Encoding"):
			return nil, false
		case asciiEqualFold(name, "Connection"):
			closing = closing || hasToken(value, "close")
		case asciiEqualFold(name, "Retry-After"):
			if !haveRetry {
				retryAfter, haveRetry = value, true
			}
		case asciiEqualFold(name, "Location"):
			if !haveLoc {
				location, haveLoc = value, true
			}
		}
	}
	noBody := code == http.StatusNoContent || code == http.StatusNotModified
	switch {
	case noBody && length >= 0:
		return nil, false // a length the status forbids: as http.ReadResponse has it
	case noBody:
		length = 0
	case length < 0:
		return nil, false // a body to the connection's end
	}
	resp := &http.Response{
		Status: statusText(code, status), StatusCode: code,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		ContentLength: length, Close: closing, Request: req, Body: http.NoBody,
	}
	if haveRetry || haveLoc {
		resp.Header = make(http.Header, 2)
		if haveRetry {
			resp.Header["Retry-After"] = []string{string(retryAfter)}
		}
		if haveLoc {
			resp.Header["Location"] = []string{string(location)}
		}
	}
	_, _ = br.Discard(end + 4) // the values above are copied: the buffer may be read over now
	if length > 0 {
		*body = fixedBody{br: br, n: length}
		resp.Body = body
	}
	return resp, true
}

var crlfcrlf = []byte("\r\n\r\n")

// cutLine splits b after its first CRLF (b ends with one); the line
// without it.
func cutLine(b []byte) (line, rest []byte) {
	i := bytes.Index(b, crlfcrlf[:2])
	return b[:i], b[i+2:]
}

// plainValue reports a header value or reason phrase with no control
// character but tabs (a bare CR or LF, NUL, DEL), which http.ReadResponse
// would read in its own way or refuse.
func plainValue(b []byte) bool {
	for _, c := range b {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// trimBlanks trims spaces and tabs from both ends, as textproto does a
// header value.
func trimBlanks(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// digits is b as a Content-Length (1 to 18 decimal digits), or -1.
func digits(b []byte) int64 {
	if len(b) == 0 || len(b) > 18 {
		return -1
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// asciiEqualFold reports whether b is s, ignoring ASCII case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// hasToken reports whether the comma-separated list v holds token,
// ignoring case, as httpguts.HeaderValuesContainsToken does.
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		item := v
		if i := bytes.IndexByte(v, ','); i >= 0 {
			item, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if asciiEqualFold(trimBlanks(item), token) {
			return true
		}
	}
	return false
}

// statusText is the answer's Status ("200 OK"): the usual ones without
// an allocation.
func statusText(code int, s []byte) string {
	switch code {
	case http.StatusOK:
		if string(s) == "200 OK" {
			return "200 OK"
		}
	case http.StatusAccepted:
		if string(s) == "202 Accepted" {
			return "202 Accepted"
		}
	case http.StatusNoContent:
		if string(s) == "204 No Content" {
			return "204 No Content"
		}
	}
	return string(s)
}

// fixedBody reads an answer's body of a known length from the
// connection's reader; io.EOF comes with its last bytes, and
// io.ErrUnexpectedEOF if the connection ends before them (as net/http's
// body reports it).
type fixedBody struct {
	br *bufio.Reader
	n  int64
}

func (b *fixedBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.br.Read(p)
	b.n -= int64(n)
	switch {
	case b.n == 0:
		err = io.EOF
	case err == io.EOF:
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *fixedBody) Close() error { return nil }
