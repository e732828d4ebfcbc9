package fanout

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// leanAnswers are answers leanAnswer must take itself: the usual shapes
// of a receiver's answer.
var leanAnswers = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nDate: Sat, 05 Dec 2026 11:00:00 GMT\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 202 Accepted\r\ncontent-length:  5 \r\nContent-Type: text/plain; charset=utf-8\r\n\r\nqueuedTAIL",
	"HTTP/1.1 204 No Content\r\nX-Request-Id: abc\r\n\r\n",
	"HTTP/1.1 204 \r\n\r\n",
	"HTTP/1.1 200\r\nContent-Length: 3\r\n\r\nabc",
	"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 120\r\nRetry-After: 5\r\nContent-Length: 4\r\n\r\nbusy",
	"HTTP/1.1 301 Moved Permanently\r\nLocation: https://example.com/new?token=x\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
	"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nab", // cut short
	"HTTP/1.1 599 Whatever\tit says\r\nX-Odd: caf\xc3\xa9\r\nContent-Length: 1\r\n\r\nx",
	"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
}

// otherAnswers are left to http.ReadResponse (or refused by both).
var otherAnswers = []string{
	"",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", // head not complete
	"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\n\r\nto the end",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nBad Name: a\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nX-Cr: a\rb\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
	"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 600 Beyond\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
	"garbage\r\n\r\n",
}

// parsed is what an attempt uses of an answer, and what follows it.
type parsed struct {
	err                    bool
	status                 string
	code                   int
	proto                  string
	length                 int64
	close, noBody          bool
	retryAfter, location   string
	body, rest             string
	bodyErr, unexpectedEOF bool
}

func parse(raw string, lean bool) parsed {
	br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
	var resp *http.Response
	var err error
	if lean {
		var body fixedBody
		resp, err = readAnswer(br, &http.Request{Method: http.MethodPost}, &body)
	} else {
		resp, err = http.ReadResponse(br, &http.Request{Method: http.MethodPost})
	}
	if err != nil {
		return parsed{err: true}
	}
	body, berr := io.ReadAll(resp.Body)
	rest, _ := io.ReadAll(br)
	return parsed{status: resp.Status, code: resp.StatusCode, proto: resp.Proto, length: resp.ContentLength,
		close: resp.Close, noBody: resp.Body == http.NoBody,
		retryAfter: resp.Header.Get("Retry-After"), location: resp.Header.Get("Location"),
		body: string(body), rest: string(rest), bodyErr: berr != nil, unexpectedEOF: errors.Is(berr, io.ErrUnexpectedEOF)}
}

// takes reports whether leanAnswer parses raw itself.
func takes(raw string) bool {
	br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
	if _, err := br.Peek(1); err != nil {
		return false
	}
	var body fixedBody
	_, ok := leanAnswer(br, &http.Request{Method: http.MethodPost}, &body)
	return ok
}

func TestLeanAnswerAgreesWithReadResponse(t *testing.T) {
	for _, raw := range append(append([]string{}, leanAnswers...), otherAnswers...) {
		if got, want := parse(raw, true), parse(raw, false); got != want {
			t.Errorf("%q:\n lean     %+v\n standard %+v", raw, got, want)
		}
	}
	for _, raw := range leanAnswers {
		if !takes(raw) {
			t.Errorf("%q: left to http.ReadResponse, want it parsed by leanAnswer", raw)
		}
	}
	for _, raw := range otherAnswers {
		if takes(raw) {
			t.Errorf("%q: parsed by leanAnswer, want it left to http.ReadResponse", raw)
		}
	}
}

// The answer to a HEAD has no body whatever its Content-Length says:
// left to http.ReadResponse, which reads none, so the next answer on the
// connection is read whole.
func TestLeanAnswerToHead(t *testing.T) {
	raw := "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
	br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
	var body fixedBody
	resp, err := readAnswer(br, &http.Request{Method: http.MethodHead}, &body)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); len(b) != 0 {
		t.Fatalf("the answer to a HEAD had a body %q", b)
	}
	next, err := readAnswer(br, &http.Request{Method: http.MethodPost}, &body)
	if err != nil || next.StatusCode != http.StatusNoContent {
		t.Fatalf("the next answer: %v, %v; want 204", next, err)
	}
}

// An answer arriving in pieces: what is not whole in the first read goes
// to http.ReadResponse, which reads the rest.
func TestLeanAnswerInPieces(t *testing.T) {
	raw := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	for cut := 1; cut < len(raw); cut++ {
		r := io.MultiReader(strings.NewReader(raw[:cut]), strings.NewReader(raw[cut:]))
		var body fixedBody
		resp, err := readAnswer(bufio.NewReaderSize(r, 4096), &http.Request{Method: http.MethodPost}, &body)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "ok" || err != nil {
			t.Fatalf("cut at %d: status %d, body %q, %v; want 200, \"ok\"", cut, resp.StatusCode, b, err)
		}
	}
}

func TestLeanAnswerAllocations(t *testing.T) {
	raw := []byte("HTTP/1.1 200 OK\r\nDate: Sat, 05 Dec 2026 11:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
	r := bytes.NewReader(raw)
	br := bufio.NewReaderSize(r, 4096)
	req := &http.Request{Method: http.MethodPost}
	var body fixedBody
	p := make([]byte, 16)
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(raw)
		br.Reset(r)
		resp, err := readAnswer(br, req, &body)
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := resp.Body.Read(p); n != 2 {
			t.Fatalf("read %d bytes of the body, want 2", n)
		}
	})
	if allocs > 1 { // the Response
		t.Errorf("%.0f allocations per answer, want 1", allocs)
	}
}

func FuzzLeanAnswer(f *testing.F) {
	for _, raw := range leanAnswers {
		f.Add(raw)
	}
	for _, raw := range otherAnswers {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if !takes(raw) {
			return
		}
		if got, want := parse(raw, true), parse(raw, false); got != want {
			t.Errorf("%q:\n lean     %+v\n standard %+v", raw, got, want)
		}
	})
}
