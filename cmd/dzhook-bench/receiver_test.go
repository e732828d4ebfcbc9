package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/signer"
)

// startReceiver starts a receiver of kind answering after service; it
// is closed, and receiverKind restored, when the test ends.
func startReceiver(t *testing.T, kind string, service time.Duration) *receiver {
	t.Helper()
	old := receiverKind
	receiverKind = kind
	t.Cleanup(func() { receiverKind = old })
	rc, err := serveReceiver(service)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.close)
	return rc
}

// withReceiverKind runs f against a receiver of each kind.
func withReceiverKind(t *testing.T, service time.Duration, f func(t *testing.T, rc *receiver)) {
	for _, kind := range receiverKinds {
		t.Run(strings.ReplaceAll(kind, "/", "_"), func(t *testing.T) { f(t, startReceiver(t, kind, service)) })
	}
}

func post(t *testing.T, client *http.Client, url, dlv, sig string, body []byte) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set(signer.HeaderSignature, sig)
	req.Header.Set(signer.HeaderDelivery, dlv)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func TestReceiverVerifiesAndNotesArrivals(t *testing.T) {
	withReceiverKind(t, 0, func(t *testing.T, rc *receiver) {
		reached := rc.expectOrdered(3)
		client := &http.Client{Timeout: 5 * time.Second}
		for i, seq := range []int{1, 3, 2} { // #2 arrives after #3: one out of order
			body := []byte(fmt.Sprintf(`{"id":"whk_%d","event":"request.updated","data":{"id":"req_7","title":"#%d"}}`, i, seq))
			if got := post(t, client, rc.url+"/bench", fmt.Sprintf("dlv_%d", i), signer.Sign([]byte(benchSecret), body), body); got != http.StatusOK {
				t.Fatalf("signed POST %d: status %d, want 200", i, got)
			}
		}
		body := []byte(`{"id":"whk_x","data":{"id":"req_8"}}`)
		if got := post(t, client, rc.url+"/bench", "dlv_forged", signer.Sign([]byte("another-secret-0123456789"), body), body); got != http.StatusUnauthorized {
			t.Fatalf("POST signed with another secret: status %d, want 401", got)
		}
		// A repeated delivery id is one arrival.
		body = []byte(`{"id":"whk_0","data":{"id":"req_7","title":"#1"}}`)
		if got := post(t, client, rc.url+"/bench", "dlv_0", signer.Sign([]byte(benchSecret), body), body); got != http.StatusOK {
			t.Fatalf("a retried delivery: status %d", got)
		}
		select {
		case <-reached:
		default:
			t.Fatal("three distinct deliveries did not reach the target of 3")
		}
		// A query string is not part of the path an arrival is noted under.
		body = []byte(`{"id":"whk_9","data":{"id":"req_9"}}`)
		if got := post(t, client, rc.url+"/bench?x=1", "dlv_9", signer.Sign([]byte(benchSecret), body), body); got != http.StatusOK {
			t.Fatalf("POST with a query string: status %d", got)
		}
		first, byReq := rc.arrivals()
		if len(first) != 4 || rc.received() != 4 || rc.total.Load() != 5 || rc.bad.Load() != 1 {
			t.Errorf("first %d, total %d, bad %d: want 4 distinct, 5 verified, 1 refused", len(first), rc.total.Load(), rc.bad.Load())
		}
		_, ok7 := byReq["/bench req_7"]
		_, ok9 := byReq["/bench req_9"]
		if !ok7 || !ok9 || len(byReq) != 2 {
			t.Errorf("arrivals by request %v: want /bench req_7 and /bench req_9 only (the forged one is not noted)", byReq)
		}
		if got := rc.misordered(); got != 1 {
			t.Errorf("misordered %d, want 1 (#2 after #3)", got)
		}
	})
}

func TestReceiverHangsUntilClosed(t *testing.T) {
	withReceiverKind(t, 0, func(t *testing.T, rc *receiver) {
		c := dialReceiver(t, rc)
		fmt.Fprintf(c, "POST /hang/y HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		var ne net.Error
		if n, err := c.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("/hang/: read %d bytes, %v: want no answer", n, err)
		}
		// close ends a hung request's connection.
		rc.close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("read %d bytes, %v: want the connection closed by the receiver's close", n, err)
		}
	})
}

func TestLeanReceiverRefusesWhatItDoesNotRead(t *testing.T) {
	rc := startReceiver(t, "lean", 0)
	for _, tc := range []struct{ raw, status, names string }{
		{"GET /bench HTTP/1.1\r\nHost: x\r\n\r\n", "405", `"GET"`},
		{"POST /bench HTTP/2.0\r\n\r\n", "505", `"HTTP/2.0"`},
		{"POST /bench HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "501", `"chunked"`},
		{"POST /bench HTTP/1.1\r\nHost: x\r\n\r\n", "411", "Content-Length"},
		{"POST /bench HTTP/1.1\r\nContent-Length: -3\r\n\r\n", "400", `"-3"`},
		{"POST /bench HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", "413", "99999999"},
		{"POST /bench HTTP/1.1\r\nno colon here\r\n\r\n", "400", `"no colon here"`},
		{"POST bench\r\n\r\n", "400", `"POST bench"`},
		{"POST /bench HTTP/1.1\r\nX: " + strings.Repeat("a", 20<<10) + "\r\n\r\n", "431", "16 KiB"},
		{"POST /bench HTTP/1.1\r\nContent-Length: 2\r\nExpect: 101-whatever\r\n\r\n{}", "417", `"101-whatever"`},
	} {
		c := dialReceiver(t, rc)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, tc.raw); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%q: %v", tc.raw[:min(len(tc.raw), 40)], err)
		}
		msg, _ := io.ReadAll(resp.Body)
		c.Close()
		if !strings.HasPrefix(resp.Status, tc.status) || !strings.Contains(string(msg), tc.names) || !resp.Close {
			t.Errorf("%q: %s %q (close %v), want %s naming %s, and the connection closed", tc.raw[:min(len(tc.raw), 40)], resp.Status, msg, resp.Close, tc.status, tc.names)
		}
	}
	if rc.total.Load() != 0 || rc.bad.Load() != 0 {
		t.Errorf("total %d, bad %d: a refused request was counted", rc.total.Load(), rc.bad.Load())
	}
}

// dialReceiver connects to rc's listener, closed when the test ends.
func dialReceiver(t *testing.T, rc *receiver) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(rc.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// signedRequest is a raw signed POST of body to path, with extra headers.
func signedRequest(path, dlv, extra string, body []byte) string {
	return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s: %s\r\n%s: %s\r\n%s\r\n%s",
		path, len(body), signer.HeaderSignature, signer.Sign([]byte(benchSecret), body), signer.HeaderDelivery, dlv, extra, body)
}

func TestReceiverFraming(t *testing.T) {
	withReceiverKind(t, 0, func(t *testing.T, rc *receiver) {
		c := dialReceiver(t, rc)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		big := []byte(`{"id":"whk_b","data":{"id":"req_b","x":"` + strings.Repeat("y", 40<<10) + `"}}`)
		// Three requests in one write, the second's body larger than the
		// receiver's buffer, the third asking to close.
		raw := signedRequest("/p", "dlv_1", "", []byte(`{"data":{"id":"req_1"}}`)) +
			signedRequest("/p", "dlv_2", "", big) +
			signedRequest("/p", "dlv_3", "Connection: keep-alive, close\r\n", []byte(`{"data":{"id":"req_3"}}`))
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		for i := 1; i <= 3; i++ {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("answer %d: %v", i, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != http.StatusOK || resp.Close != (i == 3) {
				t.Fatalf("answer %d: %s, close %v: want 200, and close on the third only", i, resp.Status, resp.Close)
			}
		}
		if n, err := br.Read(make([]byte, 1)); err == nil {
			t.Fatalf("read %d bytes after Connection: close", n)
		}
		if rc.received() != 3 || rc.bad.Load() != 0 {
			t.Fatalf("received %d, bad %d: want all three verified", rc.received(), rc.bad.Load())
		}
		// A forged request that asks to close gets its 401, and the close.
		c2 := dialReceiver(t, rc)
		_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
		forged := strings.Replace(signedRequest("/p", "dlv_f", "Connection: close\r\n", []byte(`{}`)), "sha256=", "sha256=00", 1)
		if _, err := io.WriteString(c2, forged); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c2), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !resp.Close || rc.bad.Load() != 1 {
			t.Fatalf("forged, Connection: close: %s, close %v, bad %d: want 401 and the close", resp.Status, resp.Close, rc.bad.Load())
		}
		// A client that waits for 100 Continue gets it.
		client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: time.Minute}, Timeout: 5 * time.Second}
		body := []byte(`{"data":{"id":"req_4"}}`)
		req, _ := http.NewRequest(http.MethodPost, rc.url+"/p", bytes.NewReader(body))
		req.Header.Set("Expect", "100-continue")
		req.Header.Set(signer.HeaderSignature, signer.Sign([]byte(benchSecret), body))
		req.Header.Set(signer.HeaderDelivery, "dlv_4")
		resp, err = client.Do(req)
		if err != nil {
			t.Fatalf("Expect: 100-continue: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || rc.received() != 4 {
			t.Fatalf("Expect: 100-continue: %s, received %d", resp.Status, rc.received())
		}
	})
}

func TestSlowReceiverTakesItsServiceTime(t *testing.T) {
	withReceiverKind(t, 100*time.Millisecond, func(t *testing.T, rc *receiver) {
		body := []byte(`{"data":{"id":"req_1"}}`)
		start := time.Now()
		if got := post(t, &http.Client{Timeout: 5 * time.Second}, rc.url+"/p", "dlv_1", signer.Sign([]byte(benchSecret), body), body); got != http.StatusOK {
			t.Fatalf("status %d", got)
		}
		if took := time.Since(start); took < 100*time.Millisecond {
			t.Fatalf("answered in %v: want at least the 100ms service time", took)
		}
	})
}

func TestLeanReceiverRefusalReachesAClientStillSending(t *testing.T) {
	rc := startReceiver(t, "lean", 0)
	// A 4 MiB body is refused from its Content-Length, before it is read:
	// the client, still sending, must get the 413, not a reset.
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Post(rc.url+"/p", "application/json", bytes.NewReader(make([]byte, 4<<20)))
	if err != nil {
		t.Fatalf("a refused large body: %v, want the 413", err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(msg), "4194304") {
		t.Fatalf("%s %q: want 413 naming 4194304", resp.Status, msg)
	}
}

func TestLeanReceiverForgetsAConnectionItsClientEnds(t *testing.T) {
	rc := startReceiver(t, "lean", 0)
	conns := func() int {
		rc.connMu.Lock()
		defer rc.connMu.Unlock()
		return len(rc.conns)
	}
	c := dialReceiver(t, rc)
	fmt.Fprintf(c, "POST /hang/z HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
	for deadline := time.Now().Add(5 * time.Second); conns() != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections held, want the hung one", conns())
		}
	}
	c.Close()
	for deadline := time.Now().Add(5 * time.Second); conns() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections held after the client closed its hung request", conns())
		}
	}
}
