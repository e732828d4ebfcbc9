package fanout

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/rawsock"
	"github.com/dzdesk/dzhook/signer"
)

// Error classes recorded with a failed attempt.
const (
	ClassTimeout = "timeout" // no connection, or no answer, within delivery.timeout
	ClassDNS     = "dns"     // the host name did not resolve
	ClassConnect = "connect" // refused, reset or unreachable
	ClassTLS     = "tls"     // handshake or certificate failure
	ClassHTTP    = "http"    // an answer that is not 2xx, or a broken one
	ClassBlocked = "blocked" // the egress guard refused the address
	// ClassTransform: the subscription's transform failed on the event
	// (an error, or over its cost budget); nothing was sent.
	ClassTransform = "transform"
)

// The canonical forms of the headers every attempt sets.
var (
	keyContentType      = http.CanonicalHeaderKey("Content-Type")
	keyUserAgent        = http.CanonicalHeaderKey("User-Agent")
	keySignature        = http.CanonicalHeaderKey(signer.HeaderSignature)
	keyEvent            = http.CanonicalHeaderKey(signer.HeaderEvent)
	keyDelivery         = http.CanonicalHeaderKey(signer.HeaderDelivery)
	keyAttempt          = http.CanonicalHeaderKey(signer.HeaderAttempt)
	keyWebhookID        = http.CanonicalHeaderKey(signer.HeaderWebhookID)
	keyWebhookTimestamp = http.CanonicalHeaderKey(signer.HeaderWebhookTimestamp)
	keyWebhookSignature = http.CanonicalHeaderKey(signer.HeaderWebhookSignature)
	keyAuthorization    = http.CanonicalHeaderKey("Authorization")
)

// maxDrain is how much of a response beyond the kept part is read so the
// connection can be reused; a larger body closes the connection instead.
const maxDrain = 64 << 10

// newClient is a direct client (no proxy, no client certificate): see
// newEgressClient.
func newClient(timeout time.Duration, concurrency int, dial func(ctx context.Context, network, addr string) (net.Conn, error), rootCAs *x509.CertPool) *retryablehttp.Client {
	return newEgressClient(clientConfig{timeout: timeout, concurrency: concurrency, dial: dial, rootCAs: rootCAs})
}

// clientConfig is what a client is made of: how it reaches receivers.
type clientConfig struct {
	timeout     time.Duration
	concurrency int
	dial        dialFunc       // the egress guard's dialer
	rootCAs     *x509.CertPool // nil: the system's roots
	// proxy, when set, carries every attempt (proxy.go); guard checks
	// the receivers' addresses before the proxy is asked.
	proxy *url.URL
	guard *EgressGuard
	// clientCert is presented to receivers that ask for one (tls.go).
	clientCert *clientCert
}

// egress is the part of a client's configuration that every
// subscription and the notifier share: dialer, roots, Config.Proxy.
func (cfg *Config) egress(concurrency int) clientConfig {
	return clientConfig{timeout: cfg.Timeout, concurrency: concurrency, dial: rawsock.Dialer(cfg.DialContext), rootCAs: cfg.RootCAs, proxy: cfg.proxyURL, guard: cfg.Egress}
}

// subscriptionClient returns the client of a subscription: newClient's,
// through the subscription's proxy (Config.Proxy when it names none),
// presenting its client certificate.
func subscriptionClient(s Subscription, opts *Config) (*retryablehttp.Client, error) {
	cc := opts.egress(opts.Concurrency)
	if s.Proxy != "" {
		u, err := ParseProxy(s.Proxy)
		if err != nil {
			return nil, fmt.Errorf("proxy %w", err) // never the URL: it may hold a password
		}
		cc.proxy = u
	}
	if !s.ClientCert.IsZero() {
		c, err := loadClientCert(s.ClientCert, opts.Logger.With("component", "fanout", "subscription", s.ID), time.Now)
		if err != nil {
			return nil, err
		}
		cc.clientCert = c
	}
	return newEgressClient(cc), nil
}

// newEgressClient returns the HTTP client of one subscription (or of the
// notifier). Each subscription has its own (and its own connections), so
// a receiver that hangs or fails cannot take connections or keep-alives
// from the others: retryablehttp closes the client's idle connections
// after a failed request, which with a shared client would hit every
// subscription.
//
// retryablehttp runs with RetryMax 0 and a CheckRetry that never retries:
// the journal owns the retry schedule, and retries stacked inside one
// attempt would break it. Redirects are not followed. TLS verification
// is on, always.
func newEgressClient(cc clientConfig) *retryablehttp.Client {
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cc.rootCAs, NextProtos: []string{"h2", "http/1.1"}}
	if cc.clientCert != nil {
		tlsConfig.GetClientCertificate = cc.clientCert.get
	}
	// Direct connections note their stage, for the message of a timeout
	// (stage.go).
	dial := connecting(cc.dial)
	tr := &http.Transport{
		Proxy:       nil, // never send webhooks through an ambient proxy (HTTPS_PROXY)
		DialContext: dial,
		// The handshake is ours, so that its failure has a type of its
		// own (class tls) whatever crypto/tls says; the request's context
		// bounds it (the delivery timeout).
		DialTLSContext:        tlsDialer(dial, tlsConfig),
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          cc.concurrency,
		MaxIdleConnsPerHost:   cc.concurrency,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: cc.timeout,
		DisableCompression:    true,
		TLSClientConfig:       tlsConfig,
	}
	if cc.proxy != nil {
		// The configured proxy only (proxy.go): https:// receivers
		// through a tunnel of ours, http:// ones through net/http's
		// absolute-form requests.
		p := newForwardProxy(cc.proxy, cc.dial, cc.guard, tlsConfig)
		tr.Proxy = p.forRequest
		tr.DialContext = p.dialPlain
		tr.DialTLSContext = p.dialTLS(tlsConfig)
	}
	var rt http.RoundTripper = stagedTransport{tr}
	if cc.proxy == nil {
		// Direct connections: HTTP/1.1 on the attempt's own goroutine
		// (h1.go), net/http's Transport for receivers that choose HTTP/2.
		rt = newH1Transport(dial, tr.DialTLSContext, tr, cc.concurrency, tr.IdleConnTimeout)
	}
	hc := &http.Client{
		Transport:     rt,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return &retryablehttp.Client{
		HTTPClient: hc,
		Logger:     nil,
		RetryMax:   0,
		CheckRetry: func(context.Context, *http.Response, error) (bool, error) { return false, nil },
		ErrorHandler: func(resp *http.Response, err error, _ int) (*http.Response, error) {
			return resp, err // keep the transport's error for classification
		},
		Backoff: retryablehttp.DefaultBackoff,
	}
}

// tlsError is a failed TLS handshake with a receiver.
type tlsError struct{ err error }

func (e *tlsError) Error() string { return e.err.Error() }
func (e *tlsError) Unwrap() error { return e.err }

// tlsDialer dials with dial and makes the TLS handshake, verifying the
// receiver's certificate for the host dialled (always: verification is
// never off).
func tlsDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error), base *tls.Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			conn.Close()
			return nil, err
		}
		cfg := base.Clone()
		cfg.ServerName = host
		enterStage(ctx, stageTLS, addr)
		tc := tls.Client(&tlsSocket{Conn: conn}, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err() // a timeout, not the certificate's fault
			}
			return nil, &tlsError{err: err}
		}
		return tc, nil
	}
}

// attemptResult is what one attempt produced.
type attemptResult struct {
	At         time.Time
	Duration   time.Duration
	Status     int
	Body       []byte
	RetryAfter time.Duration
	ErrorClass string
	Error      string
}

// request is what an attempt sends.
type request struct {
	method     string // "": POST
	url        string
	body       []byte
	eventType  string
	eventID    string
	deliveryID string
	attempt    int
	secret     []byte
	// standardKeys sign webhook-signature, one signature each (two
	// during a secret's rotation); none: no Standard Webhooks headers.
	standardKeys [][]byte
	// signer, when set, is the sending worker's: it keeps the keys'
	// HMACs between attempts (nil: each signature keys its own).
	signer    *signer.Signer
	headers   http.Header
	userAgent string
	// tracer, when set, makes the attempt's HTTP client span, whose
	// url.full is shownURL (the URL without its credentials);
	// traceparent sends its context to the receiver.
	tracer      trace.Tracer
	traceparent bool
	shownURL    string
}

// headerCount is how many headers send sets on r's request: sized
// exactly, a map of up to 8 is one allocation (the hint of 10 it had
// took four).
func (r *request) headerCount(auth bool) int {
	n := 6 + len(r.headers) // Content-Type, User-Agent, the signature, event, delivery and attempt
	if len(r.standardKeys) > 0 {
		n += 3
	}
	if r.traceparent {
		n++
	}
	if auth {
		n++
	}
	return n
}

// post makes one attempt: POST the body, read the status and up to limit
// bytes of the answer; inside an HTTP client span when r.tracer is set.
func post(ctx context.Context, c *retryablehttp.Client, r request, timeout time.Duration, limit int) attemptResult {
	if r.tracer == nil {
		return send(ctx, c, r, timeout, limit)
	}
	method := r.method
	if method == "" {
		method = http.MethodPost
	}
	ctx, span := clientSpan(ctx, r.tracer, method, r.url, r.shownURL)
	res := send(ctx, c, r, timeout, limit)
	endClient(span, res)
	return res
}

// send is post, without its span.
//
// Direct connections go to the h1 transport itself (h1Transport.do says
// why), bounded by a deadline; through a proxy, net/http's Transport is
// called through http.Client and retryablehttp, under a context with the
// timeout.
func send(ctx context.Context, c *retryablehttp.Client, r request, timeout time.Duration, limit int) attemptResult {
	start := time.Now()
	res := attemptResult{At: start.UTC()}
	method := r.method
	if method == "" {
		method = http.MethodPost
	}
	var (
		req      *http.Request
		rreq     *retryablehttp.Request
		tg       *h1Target
		deadline time.Time
		err      error
	)
	h1, direct := c.HTTPClient.Transport.(*h1Transport)
	if direct {
		deadline = start.Add(timeout)
		if tg, err = h1.target(r.url); err == nil {
			req = newRequest(method, tg, r.body, r.headerCount(tg.auth != ""))
		}
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
		if rreq, err = retryablehttp.NewRequestWithContext(ctx, method, r.url, r.body); err == nil {
			req = rreq.Request
		}
	}
	if err != nil {
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err // drop `parse "<url>":`, which quotes the query string
		}
		res.ErrorClass, res.Error = ClassHTTP, "build request: "+err.Error()
		return res
	}
	h := req.Header
	for k, v := range r.headers {
		h[k] = v
	}
	// The values this attempt sets share one array (Header.Set makes a
	// slice for each); the keys are canonical already.
	vals := make([]string, 0, 10)
	set := func(k, v string) {
		vals = append(vals, v)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	set(keyContentType, "application/json")
	set(keyUserAgent, r.userAgent)
	if len(r.secret) > 0 { // only notifications and connectors (Slack, Teams, Discord) may be unsigned: an HMAC with no key proves nothing
		set(keySignature, r.signer.Sign(r.secret, r.body))
	}
	set(keyEvent, r.eventType)
	set(keyDelivery, r.deliveryID)
	set(keyAttempt, strconv.Itoa(r.attempt))
	if r.traceparent {
		injectTraceparent(ctx, h)
	}
	if len(r.standardKeys) > 0 {
		set(keyWebhookID, r.eventID)
		set(keyWebhookTimestamp, strconv.FormatInt(start.Unix(), 10))
		sig := r.signer.SignStandard(r.standardKeys[0], r.eventID, start, r.body)
		for _, k := range r.standardKeys[1:] {
			sig += " " + r.signer.SignStandard(k, r.eventID, start, r.body)
		}
		set(keyWebhookSignature, sig)
	}
	var resp *http.Response
	if direct {
		// The URL's user info, as http.Client sends it: Basic
		// credentials, unless a header of the subscription's says
		// otherwise.
		if tg.auth != "" && h.Get("Authorization") == "" {
			set(keyAuthorization, tg.auth)
		}
		resp, err = h1.do(ctx, deadline, tg, req)
		if err != nil {
			// As retryablehttp does after a failed request: the
			// receiver's other idle connections may be as broken.
			h1.CloseIdleConnections()
		}
	} else {
		resp, err = c.Do(rreq)
	}
	if err != nil {
		res.Duration = time.Since(start)
		res.ErrorClass, res.Error = classify(err, ctx, deadline)
		return res
	}
	res.Status = resp.StatusCode
	res.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), start)
	var body []byte
	if resp.ContentLength == 0 || resp.Body == http.NoBody {
		body = []byte{} // what ReadAll gives for an empty answer, without its first 512 bytes
	} else {
		lr := &io.LimitedReader{R: resp.Body, N: int64(limit)}
		body, err = io.ReadAll(lr)
		if err == nil {
			// Read on a little so the connection can be reused; past that,
			// closing is cheaper than reading a large answer nobody keeps.
			lr.N = maxDrain
			_, err = io.Copy(io.Discard, lr)
		}
	}
	res.Body = body
	resp.Body.Close()
	res.Duration = time.Since(start)
	switch {
	case err != nil && res.Status >= 200 && res.Status < 300:
		// The receiver said 2xx; a body cut short does not undo that.
	case res.Status < 200 || res.Status >= 300:
		res.ErrorClass = ClassHTTP
		res.Error = "HTTP " + strconv.Itoa(res.Status)
		if loc := resp.Header.Get("Location"); res.Status >= 300 && res.Status < 400 && loc != "" {
			res.Error += " redirect to " + redactURL(loc) + " not followed"
		}
	}
	return res
}

// newRequest is an HTTP/1.1 request of method to tg with body, as
// http.NewRequest makes it (GetBody included, for the h1 transport's one
// resend), from the target's parsed URL; without a context (do takes
// its own) and with an empty header map with room for headers.
func newRequest(method string, tg *h1Target, body []byte, headers int) *http.Request {
	req := &http.Request{
		Method: method, URL: tg.url, Host: tg.host,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        make(http.Header, headers),
		ContentLength: int64(len(body)),
		Body:          http.NoBody,
		GetBody:       func() (io.ReadCloser, error) { return http.NoBody, nil },
	}
	if len(body) > 0 {
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	return req
}

// classify turns a transport error into an error class and a message that
// carries no secret (URLs lose their query string, and any user info).
// The attempt ended by its timeout if ctx is done (the proxy path's
// context carries the timeout) or deadline (the direct path's; zero:
// none) has passed.
func classify(err error, ctx context.Context, deadline time.Time) (class, msg string) {
	ended := ctx.Err() != nil || (!deadline.IsZero() && !time.Now().Before(deadline))
	class, msg = classOf(err, ended)
	// On the way through a proxy, what is not more precise (a proxy that
	// refused CONNECT, hung up before answering it) fails like a
	// connection: the receiver was never reached.
	var viaProxy *proxyError
	if class == ClassHTTP && errors.As(err, &viaProxy) {
		class = ClassConnect
	}
	return class, stripUserinfo(msg)
}

func classOf(err error, ended bool) (class, msg string) {
	var blocked *blockedError
	var dnsErr *net.DNSError
	var handshake *tlsError
	var certErr *tls.CertificateVerificationError
	var recordErr tls.RecordHeaderError
	var alert tls.AlertError
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		err = urlErr.Err // drop "Post <url>:": the URL is known and may hold a token
	}
	msg = err.Error()
	switch {
	case errors.As(err, &blocked):
		return ClassBlocked, msg
	case errors.Is(err, context.DeadlineExceeded) || ended:
		// Out of time before the request was written (a stage of the
		// connection: stage.go), or waiting for the answer.
		if staged := (*stageError)(nil); errors.As(err, &staged) {
			return ClassTimeout, staged.timeout
		}
		return ClassTimeout, "no answer within the delivery timeout"
	case errors.As(err, &dnsErr):
		return ClassDNS, msg
	case errors.As(err, &handshake), errors.As(err, &certErr), errors.As(err, &recordErr), errors.As(err, &alert),
		// An https URL naming a plain-HTTP port: net/http replaces the
		// handshake's tls.RecordHeaderError with this sentinel when the
		// transport made the handshake (ours does, in tlsDialer, and
		// keeps the record error; this holds if it ever stops).
		errors.Is(err, http.ErrSchemeMismatch),
		// An alert from the receiver after our side of the handshake
		// completed: with TLS 1.3 a receiver checks the client's
		// certificate then, and says "certificate required" or "bad
		// certificate" on the first read.
		isRemoteAlert(err):
		return ClassTLS, msg
	case isTimeout(err):
		if staged := (*stageError)(nil); errors.As(err, &staged) {
			return ClassTimeout, staged.timeout
		}
		return ClassTimeout, msg
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EPIPE), isDial(err):
		return ClassConnect, msg
	}
	// A connection closed before or during the answer (EOF, a malformed
	// response) is the receiver's side of HTTP. net/http quotes what it
	// could not parse; a peer that echoes the request (an echo service, a
	// port forwarded to the wrong place) would put the request line, the
	// URL's query string with it, in the history: the quotes are kept,
	// their content is not.
	return ClassHTTP, unquoted(msg)
}

// unquoted is msg with the content of each double-quoted ("%q") span
// replaced by "…".
func unquoted(msg string) string {
	if !strings.Contains(msg, `"`) {
		return msg
	}
	var b strings.Builder
	in, escaped := false, false
	for _, r := range msg {
		switch {
		case !in:
			b.WriteRune(r)
			in = r == '"'
		case escaped:
			escaped = false
		case r == '\\':
			escaped = true
		case r == '"':
			b.WriteString("…\"")
			in = false
		}
	}
	if in {
		b.WriteString("…")
	}
	return b.String()
}

// isRemoteAlert reports whether err is a TLS alert the peer sent, which
// crypto/tls reports as a *net.OpError with Op "remote error".
func isRemoteAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}

// userinfo matches the user info of a URL inside a message.
var userinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]*@`)

// stripUserinfo removes user:password@ from any URL a message quotes: a
// proxy's URL carries its credentials, and no message dzhook keeps or logs
// may (a net/http or third-party error could quote it one day).
func stripUserinfo(msg string) string {
	if !strings.Contains(msg, "@") {
		return msg
	}
	return userinfo.ReplaceAllString(msg, "$1")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isDial(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// redactURL drops the user info and query of a URL for logs and history.
func redactURL(raw string) string { return RedactURL(raw) }

// RedactURL is raw without its user info and with its query replaced by
// REDACTED: a URL as dzhook shows or keeps it where a credential must not
// be (logs, answers, the journal's readable copy). The incoming webhook
// URLs of Slack, Discord and Microsoft Teams carry their credential in
// the path: theirs is replaced by /REDACTED too.
func RedactURL(raw string) string { return redact(raw, false) }

// RedactConnectorURL is RedactURL for a URL whose path is a credential
// whatever its host: a connector subscription's (format slack, teams or
// discord), which may reach its destination through a relay.
func RedactConnectorURL(raw string) string { return redact(raw, true) }

func redact(raw string, path bool) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "REDACTED"
	}
	if (path || tokenInPath(u)) && u.Path != "" && u.Path != "/" {
		u.Path, u.RawPath = "/REDACTED", ""
	}
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}

// tokenInPath reports whether u is a webhook URL of a service that puts
// its credential in the path: Slack (hooks.slack.com/services/T…/B…/…),
// Discord (discord.com/api/webhooks/ID/TOKEN) and Teams' legacy
// connectors (….webhook.office.com/webhookb2/…).
func tokenInPath(u *url.URL) bool {
	// A trailing dot names the same host (an absolute name), and reaches it.
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	switch {
	case host == "hooks.slack.com", host == "hooks.slack-gov.com":
		return true
	case host == "discord.com", host == "discordapp.com", strings.HasSuffix(host, ".discord.com"), strings.HasSuffix(host, ".discordapp.com"):
		return strings.Contains(u.Path, "/webhooks/")
	case strings.HasSuffix(host, ".webhook.office.com"), host == "outlook.office.com", host == "outlook.office365.com":
		return true
	}
	return false
}

// blockedError is returned by the egress guard's dialer.
type blockedError struct {
	addr, reason string
}

func (e *blockedError) Error() string {
	return fmt.Sprintf("address %s refused by the egress guard: %s", e.addr, e.reason)
}

// errorExcerpt shortens a message kept in history, as the journal's text
// columns take it.
func errorExcerpt(s string) string { return journal.Text(s, 512) }
