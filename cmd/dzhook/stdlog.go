package main

import (
	"log"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// The standard library's log is where net/http writes some errors of its
// own, outside any logger it is given: http.Transport has no ErrorLog, and
// when a receiver sends bytes after a response that has no body (a 204
// with a body, say), the transport writes "Unsolicited response received
// on idle HTTP channel" there, once per delivery, in its own format, on
// stderr, where the structured log's readers do not look and where a
// receiver could flood it. (An admin or listen server without an ErrorLog
// writes there too.)
//
// There is no clean way to avoid the line at its source: the transport
// returns the connection to its pool before any of dzhook's code sees the
// stray bytes, finds them itself, logs and closes that connection.
// (net/http's Transport carries proxied deliveries and HTTP/2 receivers;
// dzhook's own HTTP/1.1 transport, for the rest, writes the same line in
// the same words, internal/fanout/h1.go, so that it is one kind here.)
// What remains of the problem is the line, so dzhook routes the standard log
// through its own logger, at WARN, rate-limited per kind of message (its
// first words: the rest quotes what the receiver sent): at most one line
// per kind per stdLogEvery, the next one saying how many were suppressed
// meanwhile. Turning keep-alives off instead would cost every receiver a
// new connection (and a TLS handshake) per delivery, to hide one line.

const (
	stdLogEvery = time.Minute // one line per kind per minute at most
	stdLogKinds = 64          // kinds tracked; beyond, one shared kind
	stdLogMax   = 512         // bytes of a line kept
)

// stdLog is the io.Writer the standard log writes to while dzhook runs.
type stdLog struct {
	log   *slog.Logger
	now   func() time.Time
	mu    sync.Mutex
	kinds map[string]*stdLogKind
}

type stdLogKind struct {
	last       time.Time // when a line of the kind was last logged
	suppressed int       // lines dropped since
}

func newStdLog(logger *slog.Logger, now func() time.Time) *stdLog {
	return &stdLog{log: logger, now: now, kinds: map[string]*stdLogKind{}}
}

// routeStdLog makes the standard log write through logger until the
// returned function is called, which puts back what it replaced and
// reports what was suppressed last. The standard log is the process's:
// only the binary's run sets it, for its duration.
func routeStdLog(logger *slog.Logger) (restore func()) {
	w := newStdLog(logger.With("component", "stdlib"), time.Now)
	out, flags, prefix := log.Writer(), log.Flags(), log.Prefix()
	log.SetOutput(w)
	log.SetFlags(0) // the structured log has its own time
	log.SetPrefix("")
	return func() {
		log.SetOutput(out)
		log.SetFlags(flags)
		log.SetPrefix(prefix)
		w.flush()
	}
}

// Write logs one line of the standard log, unless a line of its kind was
// logged less than stdLogEvery ago. It never fails: the standard log
// would have nowhere to say so.
func (w *stdLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if len(line) > stdLogMax {
		line = line[:stdLogMax] + "…"
	}
	line = strings.ToValidUTF8(line, "\uFFFD")
	now := w.now()
	w.mu.Lock()
	k := w.kind(line)
	if !k.last.IsZero() && now.Sub(k.last) < stdLogEvery {
		k.suppressed++
		w.mu.Unlock()
		return len(p), nil
	}
	suppressed := k.suppressed
	k.last, k.suppressed = now, 0
	w.mu.Unlock()
	args := []any{"line", line}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	w.log.Warn("standard library log", args...)
	return len(p), nil
}

// kind returns the state of line's kind: its first three words, or, once
// stdLogKinds kinds are tracked, one kind shared by all new ones, so that
// varied messages cannot grow the map without bound. Called with mu held.
func (w *stdLog) kind(line string) *stdLogKind {
	key := strings.Join(firstWords(line, 3), " ")
	if _, ok := w.kinds[key]; !ok && len(w.kinds) >= stdLogKinds {
		key = "(other)"
	}
	k := w.kinds[key]
	if k == nil {
		k = &stdLogKind{}
		w.kinds[key] = k
	}
	return k
}

func firstWords(s string, n int) []string {
	f := strings.Fields(s)
	return f[:min(n, len(f))]
}

// flush reports the lines suppressed since the last of each kind.
func (w *stdLog) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for key, k := range w.kinds {
		if k.suppressed > 0 {
			w.log.Warn("standard library log lines suppressed", "kind", key, "suppressed", k.suppressed)
			k.suppressed = 0
		}
	}
}
