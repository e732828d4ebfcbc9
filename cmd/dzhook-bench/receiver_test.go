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

// withReceiverKind runs f against a receiver of each kind.
func withReceiverKind(t *testing.T, f func(t *testing.T, rc *receiver)) {
	for _, kind := range []string{"lean", "net/http"} {
		t.Run(strings.ReplaceAll(kind, "/", "_"), func(t *testing.T) {
			defer func(k string) { receiverKind = k }(receiverKind)
			receiverKind = kind
			rc, err := newReceiver()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(rc.close)
			f(t, rc)
		})
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
	withReceiverKind(t, func(t *testing.T, rc *receiver) {
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
		if got := post(t, client, rc.url+"/bench?x=1", "dlv_0", signer.Sign([]byte(benchSecret), body), body); got != http.StatusOK {
			t.Fatalf("a retried delivery: status %d", got)
		}
		select {
		case <-reached:
		default:
			t.Fatal("three distinct deliveries did not reach the target of 3")
		}
		first, byReq := rc.arrivals()
		if len(first) != 3 || rc.total.Load() != 4 || rc.bad.Load() != 1 {
			t.Errorf("first %d, total %d, bad %d: want 3 distinct, 4 verified, 1 refused", len(first), rc.total.Load(), rc.bad.Load())
		}
		if _, ok := byReq["/bench req_7"]; !ok || len(byReq) != 1 {
			t.Errorf("arrivals by request %v: want /bench req_7 only (the forged one is not noted)", byReq)
		}
		if got := rc.misordered(); got != 1 {
			t.Errorf("misordered %d, want 1 (#2 after #3)", got)
		}
	})
}

func TestReceiverHangsUntilClosed(t *testing.T) {
	withReceiverKind(t, func(t *testing.T, rc *receiver) {
		c, err := net.Dial("tcp", strings.TrimPrefix(rc.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
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
	defer func(k string) { receiverKind = k }(receiverKind)
	receiverKind = "lean"
	rc, err := newReceiver()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.close()
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
	} {
		c, err := net.Dial("tcp", strings.TrimPrefix(rc.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
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
