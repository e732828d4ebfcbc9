package fanout

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// remoteRecorder is a receiver (https with a certificate from tlsCA,
// offering HTTP/2, or plain HTTP) that records each request's peer
// address and answers with the request's protocol.
func remoteRecorder(t *testing.T, tlsCA *testCA) (*httptest.Server, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var remotes []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		remotes = append(remotes, r.RemoteAddr)
		mu.Unlock()
		_, _ = io.WriteString(w, r.Proto)
	}))
	if tlsCA != nil {
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{tlsCA.serverCert(t)}}
		srv.EnableHTTP2 = true
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(remotes)
	}
}

// proxied makes one attempt through proxyURL with guard g and roots.
func proxied(t *testing.T, proxyURL string, g *EgressGuard, roots *x509.CertPool, target string) attemptResult {
	t.Helper()
	u, err := ParseProxy(proxyURL)
	if err != nil {
		t.Fatalf("ParseProxy: %v", err)
	}
	c := newEgressClient(clientConfig{timeout: faultTimeout, concurrency: 1, dial: g.Dialer(faultTimeout), rootCAs: roots, proxy: u, guard: g})
	return post(context.Background(), c, request{url: target, body: []byte(`{}`), secret: []byte("s"), userAgent: "t"}, faultTimeout, 100)
}

// TestProxyCarriesDeliveries: through an http:// or an https:// proxy,
// with or without credentials, an https receiver is reached through a
// CONNECT tunnel and an http one by an absolute-form request; each
// receiver's peer is the proxy's outbound connection.
func TestProxyCarriesDeliveries(t *testing.T) {
	ca := newTestCA(t, "egress test CA")
	roots := ca.pool()
	httpsRC, httpsSeen := remoteRecorder(t, ca)
	httpRC, httpSeen := remoteRecorder(t, nil)
	proxyCert := ca.serverCert(t)
	user := url.UserPassword("dzhook", "PROXY-PASSWORD-93f1")
	for _, tc := range []struct {
		name   string
		scheme string
		user   *url.Userinfo
	}{
		{"http proxy", "http", nil},
		{"http proxy with credentials", "http", user},
		{"https proxy with credentials", "https", user},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth := ""
			if tc.user != nil {
				auth = "Basic ZHpob29rOlBST1hZLVBBU1NXT1JELTkzZjE=" // dzhook:PROXY-PASSWORD-93f1
			}
			var cert *tls.Certificate
			if tc.scheme == "https" {
				cert = &proxyCert
			}
			p := testutil.NewProxy(t, "127.0.0.1:0", auth, cert)
			proxyURL := p.URL(tc.scheme, tc.user)

			// HTTP/2 inside the tunnel: the handshake with the receiver
			// is dzhook's, ALPN included.
			res := proxied(t, proxyURL, nil, roots, httpsRC.URL+"/hook?token="+faultToken)
			if res.Status != 200 || string(res.Body) != "HTTP/2.0" {
				t.Fatalf("https receiver through the proxy: %+v, want 200 over HTTP/2", res)
			}
			res = proxied(t, proxyURL, nil, roots, httpRC.URL+"/hook?token="+faultToken)
			if res.Status != 200 || string(res.Body) != "HTTP/1.1" {
				t.Fatalf("http receiver through the proxy: %+v, want 200 over HTTP/1.1", res)
			}
			connects, forwards, outbound := p.Seen()
			if want := []string{strings.TrimPrefix(httpsRC.URL, "https://")}; !slices.Equal(connects, want) {
				t.Errorf("CONNECT targets %q, want %q", connects, want)
			}
			if want := []string{httpRC.URL + "/hook?token=" + faultToken}; !slices.Equal(forwards, want) {
				t.Errorf("absolute-form requests %q, want %q", forwards, want)
			}
			for _, r := range []string{last(httpsSeen()), last(httpSeen())} {
				if !slices.Contains(outbound, r) {
					t.Errorf("a receiver's peer %s is not one of the proxy's connections %q: the request did not come through it", r, outbound)
				}
			}
		})
	}

	t.Run("wrong credentials", func(t *testing.T) {
		p := testutil.NewProxy(t, "127.0.0.1:0", "Basic something-else", nil)
		res := proxied(t, p.URL("http", user), nil, roots, httpsRC.URL+"/hook")
		if res.ErrorClass != ClassConnect || !strings.Contains(res.Error, "refused CONNECT: 407 Proxy Authentication Required") {
			t.Errorf("CONNECT answered 407: %+v, want class connect with the proxy's status", res)
		}
		if strings.Contains(res.Error, "PROXY-PASSWORD") {
			t.Errorf("the error quotes the proxy's password: %q", res.Error)
		}
	})
	t.Run("CONNECT refused", func(t *testing.T) {
		p := testutil.NewProxy(t, "127.0.0.1:0", "", nil)
		p.Refuse(403)
		res := proxied(t, p.URL("http", nil), nil, roots, httpsRC.URL+"/hook")
		if res.ErrorClass != ClassConnect || !strings.Contains(res.Error, "proxy "+p.Addr+" refused CONNECT: 403 Forbidden") {
			t.Errorf("CONNECT answered 403: %+v, want class connect with the proxy's status", res)
		}
	})
	t.Run("proxy down", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now
		for _, target := range []string{httpsRC.URL, httpRC.URL} {
			res := proxied(t, "http://dzhook:PROXY-PASSWORD-93f1@"+addr, nil, roots, target+"/hook")
			if res.ErrorClass != ClassConnect || !strings.Contains(res.Error, "proxy "+addr) || !strings.Contains(res.Error, "refused") {
				t.Errorf("%s through a proxy that is down: %+v, want class connect naming the proxy", target, res)
			}
			if strings.Contains(res.Error, "PROXY-PASSWORD") {
				t.Errorf("the error quotes the proxy's password: %q", res.Error)
			}
		}
	})
	t.Run("proxy that never answers CONNECT", func(t *testing.T) {
		hungUp := make(chan struct{}, 1)
		silent := rawPeer(t, func(c *net.TCPConn) {
			_, _ = io.Copy(io.Discard, c) // reads, answers nothing, until dzhook hangs up
			c.Close()
			hungUp <- struct{}{}
		})
		start := time.Now()
		res := proxied(t, silent, nil, roots, httpsRC.URL+"/hook")
		if elapsed := time.Since(start); res.ErrorClass != ClassTimeout || elapsed > faultTimeout+faultSlack {
			t.Errorf("silent proxy: %+v after %v, want class timeout within the delivery timeout", res, elapsed)
		}
		// The message names the proxy, and says the receiver was not
		// reached (TestTimeoutMessageNamesTheStage has the other stages).
		if want := "proxy " + strings.TrimPrefix(silent, "http://") + " did not answer CONNECT within the delivery timeout (nothing was sent)"; res.Error != want {
			t.Errorf("silent proxy: error %q, want %q", res.Error, want)
		}
		// The dial that waited for the answer ends with the attempt: it
		// does not hold the connection (and a goroutine) for ever.
		select {
		case <-hungUp:
		case <-time.After(5 * time.Second):
			t.Error("the connection to the silent proxy was still open 5s after the attempt ended")
		}
	})
	t.Run("https proxy with a certificate nobody signed for us", func(t *testing.T) {
		p := testutil.NewProxy(t, "127.0.0.1:0", "", &proxyCert)
		res := proxied(t, p.URL("https", nil), nil, nil, httpRC.URL+"/hook")
		if res.ErrorClass != ClassTLS || !strings.Contains(res.Error, "proxy "+p.Addr) {
			t.Errorf("https proxy unverifiable: %+v, want class tls naming the proxy", res)
		}
	})
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

// TestAmbientProxyIgnored: HTTPS_PROXY and HTTP_PROXY in the
// environment carry nothing; only a configured proxy does.
func TestAmbientProxyIgnored(t *testing.T) {
	p := testutil.NewProxy(t, "127.0.0.1:0", "", nil)
	t.Setenv("HTTPS_PROXY", p.URL("http", nil))
	t.Setenv("HTTP_PROXY", p.URL("http", nil))
	t.Setenv("NO_PROXY", "")
	rc, _ := remoteRecorder(t, nil)
	if res := post(context.Background(), openClient(faultTimeout, nil), request{url: rc.URL, body: []byte(`{}`), secret: []byte("s"), userAgent: "t"}, faultTimeout, 100); res.Status != 200 {
		t.Fatalf("direct: %+v", res)
	}
	if n := p.Accepted(); n != 0 {
		t.Errorf("the environment's proxy got %d connections, want none", n)
	}
}

// TestProxyEgressGuard: with a proxy, the guard checks the proxy's
// address (it is dialled like any) and every address of the receiver,
// resolved by dzhook before the proxy is asked: a refused one fails the
// attempt with class blocked and the proxy never hears of it.
func TestProxyEgressGuard(t *testing.T) {
	ca := newTestCA(t, "egress test CA")
	roots := ca.pool()
	httpsRC, _ := remoteRecorder(t, ca)
	httpRC, _ := remoteRecorder(t, nil)
	// The proxy on 127.0.0.2, the receivers on 127.0.0.1: a guard can
	// allow one and not the other.
	p := newTestProxyOrSkip(t, "127.0.0.2:0")
	proxyOnly := &EgressGuard{BlockPrivate: true, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}
	both := &EgressGuard{BlockPrivate: true, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/30")}}
	port := func(u string) string {
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(strings.TrimPrefix(u, "https://"), "http://"))
		return port
	}

	for _, tc := range []struct {
		name, target string
		guard        *EgressGuard
		class        string
		errorHas     string
	}{
		{"https receiver allowed (control)", httpsRC.URL, both, "", ""},
		{"http receiver allowed (control)", httpRC.URL, both, "", ""},
		{"https receiver on a refused address", httpsRC.URL, proxyOnly, ClassBlocked, "127.0.0.1:" + port(httpsRC.URL)},
		{"http receiver on a refused address", httpRC.URL, proxyOnly, ClassBlocked, "127.0.0.1:" + port(httpRC.URL)},
		{"https receiver whose name resolves to a refused address", "https://localhost:" + port(httpsRC.URL), proxyOnly, ClassBlocked, "(localhost)"},
		{"metadata address, whatever the configuration", "https://169.254.169.254/latest/meta-data/", nil, ClassBlocked, "metadata"},
		{"http metadata address", "http://169.254.169.254/latest/meta-data/", nil, ClassBlocked, "metadata"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := p.Accepted()
			res := proxied(t, p.URL("http", nil), tc.guard, roots, tc.target+"/hook")
			if tc.class == "" {
				if res.Status != 200 {
					t.Fatalf("%+v, want 200", res)
				}
				return
			}
			if res.ErrorClass != tc.class || !strings.Contains(res.Error, tc.errorHas) {
				t.Errorf("%+v, want class %s with %q", res, tc.class, tc.errorHas)
			}
			if n := p.Accepted() - before; n != 0 {
				t.Errorf("the proxy got %d connections for a refused receiver, want none", n)
			}
		})
	}

	// The proxy's own address is checked: on loopback, refused by
	// block_private_networks unless allowed.
	res := proxied(t, p.URL("http", nil), &EgressGuard{BlockPrivate: true, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}, roots, httpsRC.URL+"/hook")
	if res.ErrorClass != ClassBlocked || !strings.Contains(res.Error, "proxy "+p.Addr) || !strings.Contains(res.Error, "block_private_networks") {
		t.Errorf("proxy on a refused address: %+v, want class blocked naming the proxy", res)
	}
	if n := p.Accepted(); n != 2 {
		t.Errorf("the proxy got %d connections, want the controls' 2", n)
	}
}

// newTestProxyOrSkip starts a proxy on a second loopback address, which
// Linux has (all of 127.0.0.0/8) and other systems may not.
func newTestProxyOrSkip(t *testing.T, addr string) *testutil.Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("no %s on this machine: %v", addr, err)
	}
	ln.Close()
	return testutil.NewProxy(t, addr, "", nil)
}

// TestProxyDownThenUp: while the proxy is down, attempts fail with class
// connect and are retried on the schedule; once it is up, the delivery
// goes through it.
func TestProxyDownThenUp(t *testing.T) {
	store := newJournal(t)
	ca := newTestCA(t, "egress test CA")
	rc, remotes := remoteRecorder(t, ca)
	// An address nothing listens on, for now.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxyAddr := ln.Addr().String()
	ln.Close()

	d := start(t, store, Config{
		Subscriptions: []Subscription{{ID: "crm", URL: rc.URL + "/hook", Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		Journal:       store, Instance: "i1", PollInterval: 50 * time.Millisecond, Timeout: 2 * time.Second,
		RetrySchedule: []time.Duration{0, 300 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond},
		RootCAs:       ca.pool(), Proxy: "http://" + proxyAddr,
	})
	ctx := context.Background()
	if err := d.Dispatch(ctx, orderEvents([]string{"req_1"})[0]); err != nil {
		t.Fatal(err)
	}
	attempts := func() (classes []string, state string) {
		rows, err := store.Pool().Query(ctx, `SELECT coalesce(a.error_class, ''), d.state FROM dzhook.attempts a JOIN dzhook.deliveries d ON d.id = a.delivery_id
			WHERE d.subscription_id = 'crm' ORDER BY a.attempt`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var c string
			if err := rows.Scan(&c, &state); err != nil {
				t.Fatal(err)
			}
			classes = append(classes, c)
		}
		return classes, state
	}
	testutil.Eventually(t, 10*time.Second, "two attempts failed while the proxy is down", func() bool {
		c, _ := attempts()
		return len(c) >= 2
	})
	p := testutil.NewProxy(t, proxyAddr, "", nil)
	testutil.Eventually(t, 10*time.Second, "the delivery journaled as delivered", func() bool {
		_, state := attempts()
		return state == string(journal.Delivered)
	})
	classes, _ := attempts()
	for i, c := range classes[:len(classes)-1] {
		if c != ClassConnect {
			t.Errorf("attempt %d with the proxy down: class %q, want connect", i+1, c)
		}
	}
	if c := classes[len(classes)-1]; c != "" {
		t.Errorf("last attempt: class %q, want none (delivered)", c)
	}
	connects, _, outbound := p.Seen()
	if len(connects) != 1 || !slices.Contains(outbound, last(remotes())) {
		t.Errorf("the delivery did not come through the proxy: CONNECTs %q, proxy connections %q, receiver's peer %q", connects, outbound, last(remotes()))
	}
}

func TestParseProxy(t *testing.T) {
	for _, tc := range []struct {
		raw, problem string // "" : accepted
	}{
		{"http://proxy.internal:3128", ""},
		{"https://proxy.internal:8443", ""},
		{"http://user:PLANTED-PASSWORD@proxy.internal:3128", ""},
		{"http://user:PLANTED-PASSWORD@proxy.internal:3128/", ""},
		{"http://[fd00::1]:3128", ""},
		{"socks5://user:PLANTED-PASSWORD@proxy.internal:1080", "scheme must be http or https"},
		{"proxy.internal:3128", "absolute URL"}, // scheme "proxy.internal" to url.Parse
		{"//user:PLANTED-PASSWORD@proxy.internal:3128", "absolute URL"},
		{"http://user:PLANTED-PASSWORD@proxy.internal", "no port"},
		{"http://:3128", "no host"},
		{"http://user:PLANTED-PASSWORD@proxy.internal:99999", "between 1 and 65535"},
		{"http://user:PLANTED-PASSWORD@proxy.internal:3128/path", "no path or query"},
		{"http://user:PLANTED-PASSWORD@proxy.internal:3128?x=1", "no path or query"},
		{"http://user:PLANTED-PASSWORD@proxy.internal:3128/%zz", "not a valid URL"},
		{"http://[fe80::1%25eth0]:3128", "IPv6 zone"},
		{"http://prоxy.internal:3128", "non-ASCII"},
	} {
		_, err := ParseProxy(tc.raw)
		switch {
		case tc.problem == "" && err != nil:
			t.Errorf("%s: %v, want accepted", tc.raw, err)
		case tc.problem != "" && (err == nil || !strings.Contains(err.Error(), tc.problem)):
			t.Errorf("%s: %v, want a problem with %q", tc.raw, err, tc.problem)
		case err != nil && strings.Contains(err.Error(), "PLANTED"):
			t.Errorf("%s: the problem quotes the URL: %v", tc.raw, err)
		}
	}
}

// TestStripUserinfo: no message an attempt keeps quotes a URL's
// credentials, whoever wrote it.
func TestStripUserinfo(t *testing.T) {
	for in, want := range map[string]string{
		`proxyconnect tcp: dial http://dzhook:s3cret@proxy.internal:3128: refused`: `proxyconnect tcp: dial http://proxy.internal:3128: refused`,
		`Get "https://u@example.com/x": EOF`:                                       `Get "https://example.com/x": EOF`,
		`no URL here, just user@example.com`:                                       `no URL here, just user@example.com`,
		`two: http://a:b@h1:1 and https://c:d@h2:2/p`:                              `two: http://h1:1 and https://h2:2/p`,
	} {
		if got := stripUserinfo(in); got != want {
			t.Errorf("stripUserinfo(%q) = %q, want %q", in, got, want)
		}
	}
	if class, msg := classify(&url.Error{Op: "Post", URL: "https://x", Err: fmt.Errorf("via http://dzhook:s3cret@proxy:3128: %w", io.EOF)}, context.Background(), time.Time{}); strings.Contains(msg, "s3cret") || class != ClassHTTP {
		t.Errorf("classify kept the credentials or changed class: %s %q", class, msg)
	}
}
