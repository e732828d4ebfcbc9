// Package listen is the local receiver behind `dzhook listen`: an HTTP
// handler that verifies each delivery's signature the way an integrator's
// endpoint should, prints one line per request, and can play a slow or
// failing receiver so that dzhook's timeouts and retries can be watched
// from a laptop (what `stripe listen` is for Stripe).
//
// A line reads
//
//	2024-01-15T14:30:00.123Z request.created whk_abc123 attempt=1 verified -> 200
//	2024-01-15T14:30:01.456Z request.created whk_abc123 attempt=1 INVALID (invalid signature) -> 401
//
// with the arrival time (UTC), the event (X-DZDESK-Event, else the body's
// "event"), the body's "id", X-DZDESK-Attempt, the verdict and the status
// answered; "-" stands for a missing value. The line is printed once the
// request is answered (after the Delay, if any). Verbose adds the body,
// indented.
package listen

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/dzdesk/dzhook/signer"
)

// Config is the input of NewHandler.
type Config struct {
	// Secrets verify X-DZDESK-Signature, as configured on the subscription
	// (the string's bytes); a request verifying under any of them passes,
	// so the old and the new secret can be given during a rotation.
	// Required: at least one non-empty secret.
	Secrets [][]byte

	// StandardKeys verify the Standard Webhooks headers (webhook-id,
	// webhook-timestamp, webhook-signature) when a request carries them;
	// signer.StandardKey turns a secret into a key. Defaults to none: those
	// headers are ignored.
	StandardKeys [][]byte

	// Status, when not 0, is the status code (200–599) answered to every
	// verified request, e.g. 500 to watch retries or 410 to watch a
	// subscription being disabled. Defaults to 0: answer 200, or 500 as
	// FailRate says.
	Status int

	// FailRate is the probability, from 0 to 1, of answering a verified
	// request with 500 when Status is 0. Defaults to 0.
	FailRate float64

	// Delay holds each verified request this long before answering, to
	// play a slow receiver (dzhook gives up after its delivery timeout, 5 s
	// by default). The wait ends early when the client goes away.
	// Defaults to 0.
	Delay time.Duration

	// Verbose prints the body, as indented JSON, under each line.
	// Defaults to false.
	Verbose bool

	// MaxBodyBytes bounds the body read; a larger one is answered with 413.
	// Defaults to signer.DefaultMaxBodyBytes (2 MiB).
	MaxBodyBytes int64

	// Out receives the lines. Writes to it are serialized, one Write per
	// request. Defaults to os.Stdout.
	Out io.Writer

	// NowFunc gives the arrival time printed on each line and the clock
	// the webhook-timestamp is checked against. Defaults to time.Now.
	NowFunc func() time.Time

	// RandFunc returns a number in [0, 1) to draw FailRate's failures.
	// Defaults to math/rand/v2.Float64.
	RandFunc func() float64
}

// Validate reports every problem of c at once.
func (c *Config) Validate() error {
	var errs []error
	if !anyKey(c.Secrets) {
		errs = append(errs, errors.New("listen: a secret is required to verify X-DZDESK-Signature"))
	}
	if c.Status != 0 && (c.Status < 200 || c.Status > 599) {
		errs = append(errs, fmt.Errorf("listen: status %d: want 200 to 599, or 0 for normal answers", c.Status))
	}
	if !(c.FailRate >= 0 && c.FailRate <= 1) { // also rejects NaN
		errs = append(errs, fmt.Errorf("listen: fail rate %v: want 0 to 1", c.FailRate))
	}
	if c.Delay < 0 {
		errs = append(errs, fmt.Errorf("listen: delay %s: must not be negative", c.Delay))
	}
	if c.MaxBodyBytes < 0 {
		errs = append(errs, fmt.Errorf("listen: max body bytes %d: must not be negative", c.MaxBodyBytes))
	}
	return errors.Join(errs...)
}

func anyKey(keys [][]byte) bool {
	for _, k := range keys {
		if len(k) > 0 {
			return true
		}
	}
	return false
}

// Handler is the receiver's http.Handler. It is safe for concurrent use.
type Handler struct {
	cfg      Config
	verifier signer.Verifier

	mu sync.Mutex // serializes writes to cfg.Out, so lines never interleave
}

// NewHandler returns a Handler for cfg, or cfg's problems.
func NewHandler(cfg Config) (*Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = signer.DefaultMaxBodyBytes
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.NowFunc == nil {
		cfg.NowFunc = time.Now
	}
	if cfg.RandFunc == nil {
		cfg.RandFunc = rand.Float64
	}
	return &Handler{
		cfg: cfg,
		verifier: signer.Verifier{
			Secrets:      cfg.Secrets,
			StandardKeys: cfg.StandardKeys,
			NowFunc:      cfg.NowFunc,
		},
	}, nil
}

// ServeHTTP answers a POST: 401 when its signature does not verify,
// otherwise, after Delay, Status, 500 (FailRate) or 200. Other methods
// get 405. Every request, answered or not, prints one line.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now() // for the time waited; e.at may come from a test clock
	e := entry{at: h.cfg.NowFunc(), attempt: r.Header.Get(signer.HeaderAttempt), event: r.Header.Get(signer.HeaderEvent)}
	defer func() { h.print(&e) }()

	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		e.reject(w, http.StatusMethodNotAllowed, r.Method+" not allowed")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes))
	if err != nil {
		if tooBig := (*http.MaxBytesError)(nil); errors.As(err, &tooBig) {
			e.reject(w, http.StatusRequestEntityTooLarge, "body over "+strconv.FormatInt(h.cfg.MaxBodyBytes, 10)+" bytes")
			return
		}
		e.reject(w, http.StatusBadRequest, "cannot read body: "+err.Error())
		return
	}
	e.setBody(body, h.cfg.Verbose)

	if err := h.verifier.Verify(r.Header, body); err != nil {
		e.reject(w, http.StatusUnauthorized, strings.TrimPrefix(err.Error(), "signer: "))
		return
	}
	e.verified = true

	if h.cfg.Delay > 0 {
		t := time.NewTimer(h.cfg.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			// The client gave up (timeout, cancel): nobody reads an answer,
			// so return now rather than hold the goroutine for the delay.
			e.outcome = "client gone after " + time.Since(start).Round(time.Millisecond).String()
			return
		}
	}

	status := http.StatusOK
	switch {
	case h.cfg.Status != 0:
		status = h.cfg.Status
	case h.cfg.FailRate > 0 && h.cfg.RandFunc() < h.cfg.FailRate:
		status = http.StatusInternalServerError
	}
	e.status = status
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	if status == http.StatusOK {
		io.WriteString(w, "ok\n")
	} else {
		io.WriteString(w, http.StatusText(status)+" (dzhook listen)\n")
	}
}

// print writes e's line, and its body when verbose, in one Write.
func (h *Handler) print(e *entry) {
	var b bytes.Buffer
	e.format(&b)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cfg.Out.Write(b.Bytes()) // a terminal that fails to print is no reason to fail the request
}

// entry collects what one request's line shows.
type entry struct {
	at                 time.Time
	event, id, attempt string
	verified           bool
	reason             string // why the request was not accepted
	status             int    // 0 when nothing was answered
	outcome            string // instead of the status, when nothing was answered
	body               []byte // set only when verbose
}

// reject answers status with reason and records both.
func (e *entry) reject(w http.ResponseWriter, status int, reason string) {
	e.status, e.reason = status, reason
	http.Error(w, reason, status)
}

// setBody takes the event and id from body and keeps body when verbose.
func (e *entry) setBody(body []byte, verbose bool) {
	var envelope struct {
		ID    any `json:"id"`
		Event any `json:"event"`
	}
	if json.Unmarshal(body, &envelope) == nil {
		e.id = jsonString(envelope.ID)
		if e.event == "" {
			e.event = jsonString(envelope.Event)
		}
	}
	if verbose {
		e.body = body
	}
}

// jsonString returns v when it is a string or a number, else "".
func jsonString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return ""
}

func (e *entry) format(b *bytes.Buffer) {
	b.WriteString(e.at.UTC().Format("2006-01-02T15:04:05.000Z07:00"))
	b.WriteByte(' ')
	b.WriteString(field(e.event))
	b.WriteByte(' ')
	b.WriteString(field(e.id))
	b.WriteString(" attempt=")
	b.WriteString(field(e.attempt))
	if e.verified {
		b.WriteString(" verified")
	} else {
		b.WriteString(" INVALID (")
		b.WriteString(clean(e.reason))
		b.WriteByte(')')
	}
	b.WriteString(" -> ")
	if e.status != 0 {
		b.WriteString(strconv.Itoa(e.status))
	} else {
		b.WriteString(e.outcome)
	}
	b.WriteByte('\n')
	if e.body != nil {
		writeBody(b, e.body)
	}
}

// writeBody writes body as indented JSON, or quoted when it is not JSON.
//
// JSON keeps DEL and the C1 controls as they are (a title holding U+009B,
// a CSI to some terminals, from anyone who can post here): written as \u
// escapes, as JSON may.
func writeBody(b *bytes.Buffer, body []byte) {
	const indent = "    "
	b.WriteString(indent)
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, body, indent, "  "); err != nil {
		b.WriteString("(not JSON) ")
		b.WriteString(strconv.Quote(string(body)))
	} else {
		b.WriteString(EscapeC1(pretty.String()))
	}
	b.WriteByte('\n')
}

// EscapeC1 writes DEL and the C1 controls of JSON text as \u escapes,
// which JSON may use and encoding/json does not.
func EscapeC1(s string) string {
	c1 := func(r rune) bool { return r == 0x7f || (r >= 0x80 && r <= 0x9f) }
	if !strings.ContainsFunc(s, c1) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if c1(r) {
			fmt.Fprintf(&b, "\\u%04x", r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// maxField bounds a value taken from the request, in runes.
const maxField = 80

// field shows a value taken from the request as one token: "-" when
// empty, quoted when it holds spaces, quotes or control characters (which
// could fake a line or drive the terminal), cut to maxField runes.
func field(s string) string {
	if s == "" {
		return "-"
	}
	if utf8.RuneCountInString(s) > maxField {
		s = string([]rune(s)[:maxField]) + "…"
	}
	if strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) || r == '"' }) {
		return strconv.Quote(s)
	}
	return s
}

// clean keeps a reason on one line and free of control characters.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}
