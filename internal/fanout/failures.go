package fanout

import (
	"log/slog"
	"time"
)

// failures says a retrying loop's failures without a line per try: the
// first at once, then at most every failuresToldEvery with how many
// since, and the recovery once. During a journal outage the replayer,
// the heartbeat and the claim each logged every try (about 27,000 lines
// an hour). Not safe for concurrent use: each loop keeps its own.
type failures struct {
	n           int
	first, told time.Time
}

// failuresToldEvery is how often a loop that keeps failing is said.
const failuresToldEvery = time.Minute

// failed notes a failed try, and logs it when it is time to.
func (f *failures) failed(log *slog.Logger, msg string, err error, attrs ...any) {
	now := time.Now()
	f.n++
	if f.first.IsZero() {
		f.first = now
	} else if now.Sub(f.told) < failuresToldEvery {
		return
	}
	log.Warn(msg, append(attrs, "err", err, "failures", f.n, "failing_for", now.Sub(f.first).Round(time.Second).String())...)
	f.n, f.told = 0, now
}

// ok notes a try that worked: the recovery is said, once.
func (f *failures) ok(log *slog.Logger, msg string) {
	if f.first.IsZero() {
		return
	}
	log.Info(msg, "failing_for", time.Since(f.first).Round(time.Second).String())
	*f = failures{}
}
