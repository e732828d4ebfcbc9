package testutil

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
)

// CutProxy forwards the TCP connections of a database URL until Cut.
// Then, as when the client's network goes away, it takes no new
// connection (a cancel request cannot reach the server either) and drops
// its clients' side of the open ones, while their server side stays open
// and what the server sends there is read and thrown away: the server
// goes on with what it was sent.
type CutProxy struct {
	// DSN is the URL given, through the proxy.
	DSN     string
	ln      net.Listener
	mu      sync.Mutex
	clients []net.Conn
	servers []net.Conn
}

// NewCutProxy starts a proxy to dsn's server (a postgres:// URL with a
// host and port); the test's cleanup stops it.
func NewCutProxy(t testing.TB, dsn string) *CutProxy {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || u.Port() == "" {
		t.Fatalf("cut proxy: %q is not a URL with a host and port", dsn)
	}
	server := u.Host
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.Host = ln.Addr().String()
	p := &CutProxy{ln: ln, DSN: u.String()}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range append(p.clients, p.servers...) {
			c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", server)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.clients, p.servers = append(p.clients, c), append(p.servers, s)
			p.mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(s, c) }() // the server side stays open
			go func() {
				defer wg.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					if err != nil {
						c.Close()
						return
					}
					_, _ = c.Write(buf[:n]) // after the cut: thrown away
				}
			}()
		}
	}()
	return p
}

// Cut drops the clients' side of every connection and refuses new ones.
func (p *CutProxy) Cut() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.clients {
		c.Close()
	}
}
