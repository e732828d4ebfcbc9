package fanout

import (
	"context"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// silentPeer accepts connections and reads them to their end, answering
// nothing: a TLS handshake or a CONNECT to it never completes. Its
// address is host:port.
func silentPeer(t *testing.T) string {
	t.Helper()
	return strings.TrimPrefix(rawPeer(t, func(c *net.TCPConn) {
		_, _ = io.Copy(io.Discard, c) // until dzhook hangs up
		c.Close()
	}), "http://")
}

// slowAnswer is a receiver (TLS if tlsOn, HTTP/2 offered if h2) that
// reads each request whole and answers only after the attempt gave up.
func slowAnswer(t *testing.T, tlsOn, h2 bool) (url string, pool *x509.CertPool) {
	t.Helper()
	srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		select { // the client's leaving cancels r's context
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}), tlsOn, h2)
	if tlsOn {
		pool = x509.NewCertPool()
		pool.AddCert(srv.Certificate())
	}
	return srv.URL, pool
}

// TestTimeoutMessageNamesTheStage: an attempt that runs out of time
// before its request was written says in which stage, naming the host
// and port (the proxy's for the proxy's own stages), and that nothing was
// sent; one whose request was written says there was no answer, and
// never that nothing was sent, directly, through a proxy and over HTTP/2. Every one is class
// timeout, and none quotes the URL's query. (The connection itself timing
// out: TestTimeoutMessageConnecting.)
func TestTimeoutMessageNamesTheStage(t *testing.T) {
	silent := silentPeer(t)
	ca := newTestCA(t, "stage test CA")
	proxyCert := ca.serverCert(t)
	tunnel := testutil.NewProxy(t, "127.0.0.1:0", "", nil)
	slow, slowPool := slowAnswer(t, true, false)
	slowH2, slowH2Pool := slowAnswer(t, true, true)
	slowPlain, _ := slowAnswer(t, false, false)
	// written: the request was written, so the message says there was
	// no answer (net/http's HTTP/2 client in its own words when its wait
	// for the headers ends first), never that nothing was sent.
	const written = ""
	for _, tc := range []struct {
		name    string
		attempt func() attemptResult
		want    string
	}{
		{"TLS handshake never answered", func() attemptResult {
			return attemptTo(openClient(faultTimeout, nil), withToken("https://"+silent))
		}, "TLS handshake with " + silent + " timed out (nothing was sent)"},
		{"proxy never answers CONNECT", func() attemptResult {
			return proxied(t, "http://dzhook:PROXY-PASSWORD-93f1@"+silent, nil, nil, withToken("https://127.0.0.1:9"))
		}, "proxy " + silent + " did not answer CONNECT within the delivery timeout (nothing was sent)"},
		{"https proxy's TLS handshake never answered, https receiver", func() attemptResult {
			return proxied(t, "https://"+silent, nil, ca.pool(), withToken("https://127.0.0.1:9"))
		}, "TLS handshake with proxy " + silent + " timed out (nothing was sent)"},
		{"https proxy's TLS handshake never answered, http receiver", func() attemptResult {
			return proxied(t, "https://"+silent, nil, ca.pool(), withToken("http://127.0.0.1:9"))
		}, "TLS handshake with proxy " + silent + " timed out (nothing was sent)"},
		{"receiver's TLS handshake through the tunnel never answered", func() attemptResult {
			return proxied(t, tunnel.URL("http", nil), nil, nil, withToken("https://"+silent))
		}, "TLS handshake with " + silent + " timed out (nothing was sent)"},
		{"answer slower than the timeout", func() attemptResult {
			return attemptTo(openClient(faultTimeout, slowPool), withToken(slow))
		}, written},
		{"HTTP/2 answer slower than the timeout", func() attemptResult {
			return attemptTo(openClient(faultTimeout, slowH2Pool), withToken(slowH2))
		}, written},
		{"answer through a proxy slower than the timeout", func() attemptResult {
			return proxied(t, tunnel.URL("http", nil), nil, slowH2Pool, withToken(slowH2))
		}, written},
		{"answer through an https proxy slower than the timeout", func() attemptResult {
			p := testutil.NewProxy(t, "127.0.0.1:0", "", &proxyCert)
			return proxied(t, p.URL("https", nil), nil, ca.pool(), withToken(slowPlain))
		}, written},
	} {
		res := tc.attempt()
		switch {
		case tc.want == written && (res.ErrorClass != ClassTimeout || strings.Contains(res.Error, "nothing was sent") ||
			!strings.Contains(res.Error, "no answer within the delivery timeout") && !strings.Contains(res.Error, "awaiting response headers")):
			t.Errorf("%s: class %q, error %q; want class %q, no answer", tc.name, res.ErrorClass, res.Error, ClassTimeout)
		case tc.want != written && (res.ErrorClass != ClassTimeout || res.Error != tc.want):
			t.Errorf("%s: class %q, error %q; want class %q, error %q", tc.name, res.ErrorClass, res.Error, ClassTimeout, tc.want)
		}
		if strings.Contains(res.Error, faultToken) || strings.Contains(res.Error, "PROXY-PASSWORD") {
			t.Errorf("%s: the error quotes a secret: %q", tc.name, res.Error)
		}
	}
}

// TestTimeoutMessageHTTP2Redial: a receiver that chose HTTP/2 is served
// by net/http's Transport, which dials it again when it needs a new
// connection; a handshake that never ends then is named too.
func TestTimeoutMessageHTTP2Redial(t *testing.T) {
	srv, _, pool := protoServer(t, true)
	c := openClient(faultTimeout, pool)
	if res := attemptTo(c, srv.URL); res.Status != 200 || string(res.Body) != "HTTP/2.0" {
		t.Fatalf("first attempt: %+v, want 200 over HTTP/2", res)
	}
	addr := srv.Listener.Addr().String()
	srv.Close()
	c.HTTPClient.Transport.(*h1Transport).CloseIdleConnections()
	ln, err := net.Listen("tcp", addr) // the receiver's port, answering no handshake
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, conn); conn.Close() }()
		}
	}()
	res := attemptTo(c, withToken(srv.URL))
	if want := "TLS handshake with " + addr + " timed out (nothing was sent)"; res.ErrorClass != ClassTimeout || res.Error != want {
		t.Errorf("HTTP/2 receiver's handshake never answered: class %q, error %q; want class %q, error %q", res.ErrorClass, res.Error, ClassTimeout, want)
	}
}

// TestTimeoutMessageClassify: a timeout in a stage before the request was
// written has the stage's message, whether a deadline error says so or
// the attempt's time ran out, also inside the url.Error of net/http's
// client; any other timeout says there was no answer.
func TestTimeoutMessageClassify(t *testing.T) {
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	connecting := &stageError{timeout: stageConnect.timedOut("hooks.example.com:443"), err: context.DeadlineExceeded}
	const wantConnecting = "connecting to hooks.example.com:443 timed out (nothing was sent)"
	for _, tc := range []struct {
		name string
		err  error
		ctx  context.Context
		want string
	}{
		{"staged deadline", connecting, context.Background(), wantConnecting},
		{"staged deadline in a url.Error", &url.Error{Op: "Post", URL: "https://hooks.example.com/?token=" + faultToken, Err: connecting}, context.Background(), wantConnecting},
		{"staged, any error after the attempt's context expired", &stageError{timeout: stageCONNECT.timedOut("proxy.internal:3128"), err: io.ErrUnexpectedEOF}, expired,
			"proxy proxy.internal:3128 did not answer CONNECT within the delivery timeout (nothing was sent)"},
		{"deadline, not staged", context.DeadlineExceeded, context.Background(), "no answer within the delivery timeout"},
	} {
		class, msg := classify(tc.err, tc.ctx, time.Time{})
		if class != ClassTimeout || msg != tc.want {
			t.Errorf("%s: class %q, message %q; want %q, %q", tc.name, class, msg, ClassTimeout, tc.want)
		}
	}
}

// TestTimeoutMessageResolving: an attempt whose receiver's name never
// resolves (a DNS server that does not answer) says that resolving the
// name timed out, not that connecting did, over http and https; a name
// that resolves still gets "connecting to" once its connection hangs.
func TestTimeoutMessageResolving(t *testing.T) {
	dns, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Close() })
	go func() { // reads the queries, answers none
		buf := make([]byte, 512)
		for {
			if _, _, err := dns.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	d := &net.Dialer{Resolver: &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "udp", dns.LocalAddr().String())
	}}}
	c := newClient(faultTimeout, 1, d.DialContext, nil)
	for _, scheme := range []string{"http", "https"} {
		res := attemptTo(c, withToken(scheme+"://hooks.dzhook-stage.test:8443"))
		if want := "resolving hooks.dzhook-stage.test timed out (nothing was sent)"; res.ErrorClass != ClassTimeout || res.Error != want {
			t.Errorf("%s, name never resolved: class %q, error %q; want class %q, error %q", scheme, res.ErrorClass, res.Error, ClassTimeout, want)
		}
	}
	// localhost resolves from /etc/hosts, without the DNS server: the
	// stage is connecting again once the lookup is done.
	silent := silentPeer(t)
	_, port, _ := net.SplitHostPort(silent)
	res := attemptTo(c, withToken("https://localhost:"+port))
	if want := "TLS handshake with localhost:" + port + " timed out (nothing was sent)"; res.ErrorClass != ClassTimeout || res.Error != want {
		t.Errorf("name resolved, handshake never answered: class %q, error %q; want class %q, error %q", res.ErrorClass, res.Error, ClassTimeout, want)
	}
}
