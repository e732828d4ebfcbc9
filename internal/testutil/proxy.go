package testutil

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a real forward proxy, as squid or tinyproxy carry webhooks out
// of a network: CONNECT tunnels, and absolute-form requests it forwards in
// origin form. It records what it was asked and the local addresses of
// the connections it made to receivers, which receivers see as their
// peers: a request whose peer is one of them came through the proxy.
type Proxy struct {
	// Addr is the proxy's host:port.
	Addr string
	ln   net.Listener
	// auth is the Proxy-Authorization it requires ("" none); refuse,
	// when set, is its answer to every CONNECT.
	auth   string
	refuse atomic.Int32

	accepted atomic.Int64
	mu       sync.Mutex
	connects []string
	forwards []string
	outbound []string
	conns    map[net.Conn]bool
	wg       sync.WaitGroup
}

// NewProxy starts a proxy on addr ("127.0.0.1:0" for any port) until the
// test ends. With auth it answers 407 to requests without that
// Proxy-Authorization; with cert it speaks TLS to its clients (an
// https:// proxy).
func NewProxy(t testing.TB, addr, auth string, cert *tls.Certificate) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("proxy: listen on %s: %v", addr, err)
	}
	if cert != nil {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*cert}})
	}
	p := &Proxy{ln: ln, Addr: ln.Addr().String(), auth: auth, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepted.Add(1)
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(c)
			}()
		}
	}()
	t.Cleanup(p.Close)
	return p
}

// URL is the proxy's URL with a scheme ("http", "https") and user info
// (nil for none).
func (p *Proxy) URL(scheme string, user *url.Userinfo) string {
	return (&url.URL{Scheme: scheme, Host: p.Addr, User: user}).String()
}

// Refuse makes the proxy answer every CONNECT with status (0: tunnel).
func (p *Proxy) Refuse(status int) { p.refuse.Store(int32(status)) }

// Accepted is how many connections the proxy accepted.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Seen returns the CONNECT targets (host:port), the absolute-form
// request URLs, and the local addresses of the proxy's connections to
// receivers, each in order.
func (p *Proxy) Seen() (connects, forwards, outbound []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.connects), slices.Clone(p.forwards), slices.Clone(p.outbound)
}

// Close stops the proxy and every connection it holds.
func (p *Proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
}

func (p *Proxy) record(list *[]string, v string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	*list = append(*list, v)
}

func (p *Proxy) dialReceiver(addr string) (net.Conn, error) {
	up, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	p.record(&p.outbound, up.LocalAddr().String())
	p.track(up, true)
	return up, nil
}

func (p *Proxy) serve(c net.Conn) {
	p.track(c, true)
	defer func() {
		p.track(c, false)
		c.Close()
	}()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if p.auth != "" && req.Header.Get("Proxy-Authorization") != p.auth {
			_, _ = io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
			return
		}
		if req.Method == http.MethodConnect {
			p.tunnel(c, br, req.RequestURI)
			return
		}
		if !req.URL.IsAbs() {
			_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			return
		}
		if !p.forward(c, req) {
			return
		}
	}
}

// tunnel serves a CONNECT to target: 200, then bytes both ways until
// either side closes.
func (p *Proxy) tunnel(c net.Conn, br *bufio.Reader, target string) {
	p.record(&p.connects, target)
	if status := int(p.refuse.Load()); status != 0 {
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n", status, http.StatusText(status))
		return
	}
	up, err := p.dialReceiver(target)
	if err != nil {
		_, _ = io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	defer func() {
		up.Close()
		p.track(up, false)
	}()
	_, _ = io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, br)
		_ = up.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(c, up)
	c.Close()
	<-done
}

// forward sends an absolute-form request to its host in origin form and
// relays the answer; false when the client connection is done.
func (p *Proxy) forward(c net.Conn, req *http.Request) bool {
	p.record(&p.forwards, req.URL.String())
	host := req.URL.Host
	if req.URL.Port() == "" {
		host = net.JoinHostPort(req.URL.Hostname(), "80")
	}
	up, err := p.dialReceiver(host)
	if err != nil {
		_, _ = io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return false
	}
	defer func() {
		up.Close()
		p.track(up, false)
	}()
	req.RequestURI = "" // written in origin form
	req.Header.Del("Proxy-Authorization")
	if err := req.Write(up); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(up), req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return resp.Write(c) == nil
}
