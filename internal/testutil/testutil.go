// Package testutil holds helpers shared by dzhook's tests: a logger that
// writes to the test log, and a recording webhook receiver.
package testutil

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Logger writes log lines to the test's log (shown with -v or on failure).
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Request is one request a Receiver got.
type Request struct {
	At     time.Time
	Header http.Header
	Body   []byte
}

// Receiver is a webhook endpoint that records every request and answers
// with Respond (200 by default).
type Receiver struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []Request
	// Respond chooses the answer; it may sleep to play a slow receiver.
	respond func(n int, r *http.Request, body []byte) (status int, header http.Header, body2 string)
	got     chan struct{}
}

// NewReceiver starts a receiver for the test.
func NewReceiver(t testing.TB) *Receiver {
	rc := &Receiver{got: make(chan struct{}, 1)}
	rc.Server = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.Close)
	return rc
}

// SetRespond replaces the answer function; n counts requests from 1.
func (rc *Receiver) SetRespond(f func(n int, r *http.Request, body []byte) (int, http.Header, string)) {
	rc.mu.Lock()
	rc.respond = f
	rc.mu.Unlock()
}

// FailUntilUp makes the receiver answer status with body until the
// switch it returns is set, and 200 "ok" from then on.
func (rc *Receiver) FailUntilUp(status int, body string) *atomic.Bool {
	up := new(atomic.Bool)
	rc.SetRespond(func(int, *http.Request, []byte) (int, http.Header, string) {
		if up.Load() {
			return http.StatusOK, nil, "ok"
		}
		return status, nil, body
	})
	return up
}

func (rc *Receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, Request{At: time.Now(), Header: r.Header.Clone(), Body: body})
	n := len(rc.reqs)
	respond := rc.respond
	rc.mu.Unlock()
	select {
	case rc.got <- struct{}{}:
	default:
	}
	status, header, text := http.StatusOK, http.Header(nil), "ok"
	if respond != nil {
		status, header, text = respond(n, r, body)
	}
	for k, v := range header {
		w.Header()[k] = v
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, text)
}

// Requests returns what was received so far.
func (rc *Receiver) Requests() []Request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]Request(nil), rc.reqs...)
}

// Wait waits until at least n requests arrived and returns them.
func (rc *Receiver) Wait(t testing.TB, n int, timeout time.Duration) []Request {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if reqs := rc.Requests(); len(reqs) >= n {
			return reqs
		}
		select {
		case <-rc.got:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("receiver: timed out after %s waiting for %d requests; got %d", timeout, n, len(rc.Requests()))
		}
	}
}

// Eventually polls cond until it is true or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// NewReceiverAt starts a receiver on a given address (host:port), for a
// receiver that "comes back" where dzhook already sends.
func NewReceiverAt(t testing.TB, addr string) *Receiver {
	t.Helper()
	rc := &Receiver{got: make(chan struct{}, 1)}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	rc.Server = &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(rc.serve)}}
	rc.Server.Start()
	t.Cleanup(rc.Close)
	return rc
}

// SyncBuffer is a bytes.Buffer that goroutines (a command, a process, a
// logger, an exporter) write while the test reads.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
