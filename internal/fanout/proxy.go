package fanout

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Forward proxies (delivery.proxy, subscriptions[].proxy). Only an
// explicit one: the environment's HTTPS_PROXY and HTTP_PROXY are never
// used, since a webhook leaving through a proxy nobody configured for it
// is a surprise at best.
//
// An https:// receiver is reached through a tunnel (HTTP CONNECT) that
// dzhook opens itself, so the TLS handshake with the receiver is still
// dzhook's (tlsDialer: verified, and its failure classed tls) and the
// proxy sees only the receiver's host and port. An http:// receiver gets
// absolute-form requests (GET http://host/path), made by net/http's own
// proxy support.
//
// The egress guard still applies, twice. The proxy's own address is
// dialled through the guard's dialer like any other (with
// block_private_networks, a proxy on a private network must be in
// allow_networks). And since it is the proxy that connects to the
// receiver, dzhook resolves the receiver's name itself and checks every
// address before it asks the proxy for anything (class blocked if one is
// refused). The proxy resolves the name again when it connects: a DNS
// answer that changes between the two (rebinding) is the proxy's to
// refuse; dzhook cannot see where the proxy connects.

// ParseProxy parses a forward proxy's URL: http:// or https://, a host
// and a port; user:password, if present, is sent as Proxy-Authorization
// (Basic). The URL may hold a password, so an error never quotes it.
func ParseProxy(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("is not a valid URL")
	}
	switch u.Scheme {
	case "http", "https":
	case "":
		return nil, errors.New("must be an absolute URL such as http://proxy.internal:3128")
	default:
		if u.Opaque != "" { // host:port without a scheme
			return nil, errors.New("must be an absolute URL such as http://proxy.internal:3128")
		}
		return nil, errors.New("its scheme must be http or https (the connection to the proxy; https receivers are tunnelled either way)")
	}
	switch {
	case u.Hostname() == "":
		return nil, errors.New("has no host")
	case u.Port() == "":
		return nil, errors.New("has no port: write it out, e.g. http://proxy.internal:3128")
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "", u.Opaque != "":
		return nil, errors.New("must be only scheme://host:port (and user:password@): a proxy has no path or query")
	case strings.Contains(u.Hostname(), "%"):
		return nil, errors.New("host has an IPv6 zone (%…)")
	}
	if n, err := strconv.Atoi(u.Port()); err != nil || n < 1 || n > 65535 {
		return nil, errors.New("its port is not between 1 and 65535")
	}
	for _, r := range u.Hostname() {
		if r > 0x7e {
			return nil, errors.New("host has non-ASCII characters: write it in its punycode form (xn--…)")
		}
	}
	return u, nil
}

// proxyError is a failure on the way through the proxy: dialling it, the
// TLS handshake with an https:// proxy, or its answer to CONNECT. It
// names the proxy by host and port only, never with its user info.
type proxyError struct {
	proxy string // host:port
	// status is the proxy's answer to CONNECT when it was not 2xx
	// ("403 Forbidden"); "" when it gave none.
	status string
	err    error
}

func (e *proxyError) Error() string {
	if e.status != "" {
		return "proxy " + e.proxy + " refused CONNECT: " + e.status
	}
	return "proxy " + e.proxy + ": " + e.err.Error()
}

func (e *proxyError) Unwrap() error { return e.err }

// errProxyStatus is what a proxyError with a status wraps.
var errProxyStatus = errors.New("proxy refused CONNECT")

// forwardProxy sends one client's connections through a proxy.
type forwardProxy struct {
	url   *url.URL // with its user info: net/http sends it for http:// receivers
	addr  string   // host:port
	tls   bool     // https:// proxy: TLS to the proxy itself
	auth  string   // Proxy-Authorization of CONNECT; "" for none
	dial  dialFunc // the guard's: the proxy's address is checked
	guard *EgressGuard
	// proxyTLS verifies an https:// proxy's certificate with the roots
	// receivers' are verified with, and offers HTTP/1.1 only: absolute-form
	// requests are HTTP/1.
	proxyTLS *tls.Config
}

func newForwardProxy(u *url.URL, dial dialFunc, guard *EgressGuard, base *tls.Config) *forwardProxy {
	p := &forwardProxy{url: u, addr: net.JoinHostPort(u.Hostname(), u.Port()), tls: u.Scheme == "https", dial: dial, guard: guard}
	if u.User != nil {
		pass, _ := u.User.Password()
		p.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass))
	}
	if p.tls {
		p.proxyTLS = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: base.RootCAs, ServerName: u.Hostname(), NextProtos: []string{"http/1.1"}}
	}
	return p
}

// forRequest is http.Transport.Proxy: http:// receivers go through the
// proxy in absolute form once their addresses passed the guard; https://
// ones are tunnelled by dialTLS (the transport sees no proxy for them).
func (p *forwardProxy) forRequest(req *http.Request) (*url.URL, error) {
	if req.URL.Scheme != "http" {
		return nil, nil
	}
	port := req.URL.Port()
	if port == "" {
		port = "80"
	}
	if err := p.checkTarget(req.Context(), req.URL.Hostname(), port); err != nil {
		return nil, err
	}
	return p.url, nil
}

// dialPlain is http.Transport.DialContext: with a proxy, the transport
// dials only the proxy (for http:// receivers through an http:// proxy).
func (p *forwardProxy) dialPlain(ctx context.Context, network, addr string) (net.Conn, error) {
	enterStage(ctx, stageProxyConnect, p.addr)
	conn, err := p.dial(ctx, network, addr)
	if err != nil {
		return nil, &proxyError{proxy: p.addr, err: err}
	}
	return conn, nil
}

// dialTLS is http.Transport.DialTLSContext: a tunnel to an https://
// receiver with dzhook's TLS handshake inside, or, for an http://
// receiver through an https:// proxy, the TLS connection to the proxy.
// (An https:// receiver at the proxy's own address is then reached
// without a tunnel: that address is the proxy, dialled and verified the
// same way.)
func (p *forwardProxy) dialTLS(base *tls.Config) dialFunc {
	tunnelled := tlsDialer(p.tunnel, base)
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if p.tls && addr == p.addr {
			return p.dialProxy(ctx)
		}
		return tunnelled(ctx, network, addr)
	}
}

// dialProxy connects to the proxy: through the guard's dialer, then TLS
// for an https:// proxy.
func (p *forwardProxy) dialProxy(ctx context.Context) (net.Conn, error) {
	enterStage(ctx, stageProxyConnect, p.addr)
	conn, err := p.dial(ctx, "tcp", p.addr)
	if err != nil {
		return nil, &proxyError{proxy: p.addr, err: err}
	}
	if !p.tls {
		return conn, nil
	}
	enterStage(ctx, stageProxyTLS, p.addr)
	tc := tls.Client(conn, p.proxyTLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &proxyError{proxy: p.addr, err: &tlsError{err: err}}
	}
	return tc, nil
}

// tunnel opens a CONNECT tunnel to addr (the receiver's host:port) once
// every address of the receiver passed the guard.
func (p *forwardProxy) tunnel(ctx context.Context, _, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if err := p.checkTarget(ctx, host, port); err != nil {
		return nil, err
	}
	conn, err := p.dialProxy(ctx)
	if err != nil {
		return nil, err
	}
	// The answer is awaited within the attempt's bounds: its deadline if
	// the context has one, and its cancellation (net/http dials with a
	// context that has no deadline and is cancelled when the request
	// stops waiting for the connection).
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	enterStage(ctx, stageCONNECT, p.addr)
	err = p.connect(conn, addr)
	if !stop() && err == nil {
		err = ctx.Err() // cancelled as the answer came: the deadline is set
	}
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// connect asks the proxy for a tunnel to addr on conn.
func (p *forwardProxy) connect(conn net.Conn, addr string) error {
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: addr}, Host: addr, Header: http.Header{}}
	if p.auth != "" {
		req.Header.Set("Proxy-Authorization", p.auth)
	}
	if err := req.Write(conn); err != nil {
		return &proxyError{proxy: p.addr, err: err}
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return &proxyError{proxy: p.addr, err: fmt.Errorf("no answer to CONNECT: %w", err)}
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &proxyError{proxy: p.addr, status: resp.Status, err: errProxyStatus}
	}
	if br.Buffered() > 0 {
		// A receiver speaks only after the ClientHello: bytes already
		// here came from the proxy, and would be lost or, worse, taken
		// for the receiver's.
		return &proxyError{proxy: p.addr, err: errors.New("sent data after its answer to CONNECT")}
	}
	return nil
}

// checkTarget resolves a receiver's host and checks every address with
// the guard: the proxy connects to the receiver, so this is the only
// check dzhook can make. A refused address fails the attempt before the
// proxy is asked anything.
func (p *forwardProxy) checkTarget(ctx context.Context, host, port string) error {
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		enterStage(ctx, stageResolve, host)
		addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return err // a *net.DNSError: class dns
		}
	}
	for _, ip := range addrs {
		if reason := p.guard.Check(ip); reason != "" {
			addr := net.JoinHostPort(ip.String(), port)
			if ip.String() != host {
				addr += " (" + host + ")"
			}
			return &blockedError{addr: addr, reason: reason + "; checked before asking the proxy"}
		}
	}
	return nil
}
