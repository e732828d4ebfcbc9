package fanout

import (
	"context"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"sync"
)

// The stages of an attempt's connection, for the message of a timeout.
//
// An attempt that runs out of time before its request is written
// (connecting, a TLS handshake, a proxy's CONNECT) sent nothing: the
// receiver cannot have acted on it (no duplicate is possible), and what
// to look at is the way there (the network, a firewall, the proxy), not
// the receiver's code. Its message says so, naming the stage and the
// host:port ("connecting to 10.0.0.5:443 timed out (nothing was sent)");
// "no answer within the delivery timeout" is for a request that was
// written. The class is timeout either way.
//
// The dialers say which stage they enter (enterStage) to a record of it
// in the dial's context (withStage). The h1 transport's own dials hand
// their error to the attempt, which dialFor wraps with the stage
// (stageError). net/http's Transport (proxied attempts, receivers that
// chose HTTP/2) dials on a goroutine of its own, under a context with
// the request's values but not its deadline, and at the deadline returns
// the context's error, not the dial's: stagedRoundTrip reads the record
// when the request fails. The dial that runs for a request may not be
// the one that serves it (another's connection may come first), so the
// record ends when the request gets its connection (httptrace's
// GotConn): from then on its request may have been written.

// stage is how far a connection got.
type stage uint8

const (
	stageNone         stage = iota
	stageResolve            // resolving a receiver's name (connecting; through a proxy: checkTarget)
	stageConnect            // connecting to the receiver
	stageTLS                // the TLS handshake with the receiver
	stageProxyConnect       // connecting to the proxy
	stageProxyTLS           // the TLS handshake with an https:// proxy
	stageCONNECT            // waiting for the proxy's answer to CONNECT
)

// timedOut is the message of a timeout in s; addr is the host:port
// being reached (the proxy's for its stages; a host name for
// stageResolve). "" for stageNone.
func (s stage) timedOut(addr string) string {
	const nothingSent = " timed out (nothing was sent)"
	switch s {
	case stageResolve:
		return "resolving " + addr + nothingSent
	case stageConnect:
		return "connecting to " + addr + nothingSent
	case stageTLS:
		return "TLS handshake with " + addr + nothingSent
	case stageProxyConnect:
		return "connecting to proxy " + addr + nothingSent
	case stageProxyTLS:
		return "TLS handshake with proxy " + addr + nothingSent
	case stageCONNECT:
		return "proxy " + addr + " did not answer CONNECT within the delivery timeout (nothing was sent)"
	}
	return ""
}

// stageError is a failure before the request was written, with the
// message a timeout in its stage gets (classOf). Its text is its error's:
// a failure that is not a timeout (refused, a certificate) says what it
// is, as before.
type stageError struct {
	timeout string
	err     error
}

func (e *stageError) Error() string { return e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

// dialStage records the stage of a request's connection.
type dialStage struct {
	mu   sync.Mutex
	at   stage
	addr string
	got  bool // the request has its connection: a dial still running serves another
}

type dialStageKey struct{}

// withStage is ctx with a record of the stage its dials reach.
func withStage(ctx context.Context) (context.Context, *dialStage) {
	s := &dialStage{}
	return context.WithValue(ctx, dialStageKey{}, s), s
}

// enterStage notes that the dial under ctx enters stage s to reach addr;
// nothing if ctx has no record.
func enterStage(ctx context.Context, s stage, addr string) {
	d, _ := ctx.Value(dialStageKey{}).(*dialStage)
	if d == nil {
		return
	}
	d.mu.Lock()
	if !d.got {
		d.at, d.addr = s, addr
	}
	d.mu.Unlock()
}

// gotConn ends the record: the request has its connection.
func (d *dialStage) gotConn() {
	d.mu.Lock()
	d.got, d.at = true, stageNone
	d.mu.Unlock()
}

// wrap is err with the stage it ended in; err as it is once the request
// has its connection (or none was dialled).
func (d *dialStage) wrap(err error) error {
	if err == nil {
		return nil
	}
	d.mu.Lock()
	at, addr := d.at, d.addr
	d.mu.Unlock()
	if at == stageNone {
		return err
	}
	return &stageError{timeout: at.timedOut(addr), err: err}
}

// connecting is dial, in stage stageConnect: the dialler of direct
// connections. A receiver named by a host name is in stageResolve while
// net.Dialer looks its name up (the net package's trace hooks, which
// httptrace installs), so that a lookup that hangs is not told as a
// connection that did.
func connecting(dial dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		enterStage(ctx, stageConnect, addr)
		if host, _, err := net.SplitHostPort(addr); err == nil && ctx.Value(dialStageKey{}) != nil {
			if _, err := netip.ParseAddr(host); err != nil {
				ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
					DNSStart: func(httptrace.DNSStartInfo) { enterStage(ctx, stageResolve, host) },
					DNSDone: func(info httptrace.DNSDoneInfo) {
						if info.Err == nil { // a lookup that timed out stays in its stage
							enterStage(ctx, stageConnect, addr)
						}
					},
				})
			}
		}
		return dial(ctx, network, addr)
	}
}

// stagedRoundTrip is rt.RoundTrip (net/http's Transport) with a failure
// wrapped with the stage its connection was in.
func stagedRoundTrip(rt http.RoundTripper, req *http.Request) (*http.Response, error) {
	ctx, st := withStage(req.Context())
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { st.gotConn() }})
	resp, err := rt.RoundTrip(req.WithContext(ctx))
	if err != nil {
		return nil, st.wrap(err)
	}
	return resp, nil
}

// stagedTransport is the Transport of proxied attempts, its failures
// wrapped with their stage.
type stagedTransport struct{ *http.Transport }

func (t stagedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return stagedRoundTrip(t.Transport, req)
}
