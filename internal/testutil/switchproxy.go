package testutil

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// SwitchProxy forwards TCP connections to a server it can be switched
// away from, as a virtual IP moved by a failover.
type SwitchProxy struct {
	ln     net.Listener
	target atomic.Pointer[string]
	mu     sync.Mutex
	conns  []net.Conn
	cuts   int // Cut calls: a connection dialled across one is closed
}

// NewSwitchProxy starts a proxy to target (host:port); the test's
// cleanup stops it and cuts what is open.
func NewSwitchProxy(t testing.TB, target string) *SwitchProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &SwitchProxy{ln: ln}
	p.target.Store(&target)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			cuts := p.cuts
			p.mu.Unlock()
			u, err := net.Dial("tcp", *p.target.Load())
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if cuts != p.cuts {
				// Dialled across a switch (maybe to the old target), or
				// accepted before a cut: cut too.
				p.mu.Unlock()
				c.Close()
				u.Close()
				continue
			}
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(u, c); u.Close() })
			wg.Go(func() { _, _ = io.Copy(c, u); c.Close() })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		wg.Wait()
	})
	return p
}

// SwitchTo leads new connections to target and cuts the open ones.
func (p *SwitchProxy) SwitchTo(target string) {
	p.target.Store(&target)
	p.Cut()
}

// Redirect sends new connections to target, leaving the open ones be.
func (p *SwitchProxy) Redirect(target string) { p.target.Store(&target) }

// Cut closes the open connections, both sides.
func (p *SwitchProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cuts++
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// DSN is a postgres:// URL of database db (as user postgres) through
// the proxy.
func (p *SwitchProxy) DSN(db string) string {
	return "postgres://postgres@" + p.ln.Addr().String() + "/" + db + "?sslmode=disable"
}
