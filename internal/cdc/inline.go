package cdc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// The reader processes a message itself when the processor is idle and
// nothing waits for it, instead of handing the message over. A hand-over
// readies the processor's goroutine, and with a processor (P) idle the Go
// runtime wakes a thread for it (wakep): at a few hundred transactions a
// second, where every message comes alone, that wake and the thread's
// spinning and parking again were a quarter of dzhook's thread wakes per
// event (BENCHMARKS.md, issue 17). Order is kept: the reader processes a
// message only when every message before it is processed (busy is 0), and
// reads no other until it is done.
//
// While it processes, the reader does not read. The handler may wait a
// long time (backpressure from the journal writer, a stall for a schema
// reload), so a guard takes over the reader's duties that cannot wait:
// it reports the stream's position every StatusInterval/2, as enqueue does
// while the processor is busy, so the server never times the connection
// out, and Interrupt ends the session at once by closing the connection.
//
// In a catch-up messages wait in the connection's buffer: processing them
// here would stop reading while they are processed. After inlineStreak
// messages processed here while more were already buffered, the reader
// hands messages over again (the processor's goroutine works beside it),
// until it has caught up: nothing buffered when it reads, and nothing
// handed over left to process. A message larger than pgconn's read
// buffer is read alone, so the empty buffer after it says nothing.

// inlineStreak is how many messages in a row the reader processes itself
// while more wait in the buffer: a small transaction's, not a catch-up's.
const inlineStreak = 64

// bigMessage is pgconn's read buffer (pgproto3's chunk reader, 8 KiB):
// a larger message is read by itself.
const bigMessage = 8 << 10

// inliner is a session's state of processing in the reader.
type inliner struct {
	ctx  context.Context // the session's
	s    *Stream
	proc *processor
	conn *pgconn.PgConn
	// streak counts the messages processed here since the buffer was
	// last empty at a receive; handOver is set once it passed
	// inlineStreak, until the reader catches up. big: the last message
	// received was a bigMessage.
	streak   int
	handOver bool
	big      bool

	every time.Duration
	timer *time.Timer // the guard's (report), armed while processing

	// active is set while a message is processed here. The guard's
	// report writes to the connection only while it is, under mu, and
	// end waits on mu for a report under way. interrupt does not take mu
	// (a report may be blocked writing) but imu, on which end waits too:
	// once the session ends, no interrupt of its touches the stream's
	// state, which the next session owns. interrupted is its error, the
	// session's end.
	active      atomic.Bool
	mu          sync.Mutex
	reportErr   error // a report's failure, the session's end (under mu)
	imu         sync.Mutex
	interrupted atomic.Pointer[error]
}

func newInliner(ctx context.Context, s *Stream, proc *processor, conn *pgconn.PgConn) *inliner {
	in := &inliner{ctx: ctx, s: s, proc: proc, conn: conn, every: s.cfg.StatusInterval / 2}
	in.timer = time.AfterFunc(time.Hour, in.report)
	in.timer.Stop()
	return in
}

// receiving is called before each receive: an empty buffer then means the
// reader has caught up with what arrived.
func (in *inliner) receiving() {
	if in.conn.Frontend().ReadBufferLen() == 0 && !in.big {
		in.streak = 0
		if in.s.busy.Load() == 0 {
			in.handOver = false
		}
	}
}

// received is called with each XLogData message's size.
func (in *inliner) received(n int) { in.big = n > bigMessage }

// ended is the session's end decided while the reader processed, if any.
func (in *inliner) ended() error {
	if err := in.interrupted.Load(); err != nil {
		return *err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.reportErr
}

// try processes w here if the processor is idle with nothing handed over
// left, and reports whether it did; err is the session's end (a handler
// error is fatal, as in the processor's goroutine).
func (in *inliner) try(ctx context.Context, w wal) (bool, error) {
	if in.handOver || in.s.busy.Load() != 0 {
		return false, nil
	}
	if in.streak++; in.streak > inlineStreak {
		in.handOver = true
		return false, nil
	}
	// busy (an atomic) orders this with the processor's goroutine: its
	// last message's processing happened before busy went to 0, and it
	// takes the next one only after the reader hands it over.
	in.s.busy.Add(1)
	in.s.inlined.Add(1)
	in.begin()
	if in.interrupted.Load() != nil {
		// The session ended before this message (the processor's
		// goroutine failed a type lookup, and its queue was empty): it is
		// not handled here; the next session sends it again.
		ended := in.end()
		in.s.busy.Add(-1)
		return true, ended
	}
	err := in.proc.handle(ctx, w)
	ended := in.end()
	if err == nil && w.data[0] == 'B' {
		// A Begin hands nothing over, but its changes may be queued
		// after it (the streak's end, a busy processor) and handed over
		// before its commit: counted up to the commit record as a queued
		// Begin is (queuedTo). Without it, a session cut off before the
		// commit judged a fork below it without that transaction, and
		// the queued changes of the dead branch were handed over under
		// the new timeline (found by a review). Before busy goes down:
		// queuedEnd forgets every span once busy is 0.
		in.s.noteQueued(&w)
	}
	in.s.busy.Add(-1)
	if err != nil {
		if ctx.Err() != nil {
			return true, nil // stopped while the handler waited
		}
		var lookup *typeLookupError
		if errors.As(err, &lookup) {
			// The session ends and the next sends the message again;
			// nothing was handed over after it.
			return true, fmt.Errorf("wal at %s: %w", w.start, err)
		}
		return true, &fatalError{fmt.Errorf("wal at %s: %w", w.start, err)}
	}
	return true, ended
}

// begin arms the guard for a message processed here.
func (in *inliner) begin() {
	in.active.Store(true)
	in.s.inlining.Store(in)
	in.timer.Reset(in.every)
	// Interrupt sends, then looks at inlining; this stores, then looks at
	// the channel: one of the two sees the other.
	select {
	case err := <-in.s.interrupt:
		in.interrupt(err)
	default:
	}
}

// end disarms the guard, waiting for a report under way, and returns the
// session's end if the guard decided it.
func (in *inliner) end() error {
	in.timer.Stop()
	in.s.inlining.Store(nil)
	in.active.Store(false)
	in.imu.Lock() // an interrupt under way finishes first
	in.imu.Unlock()
	in.mu.Lock() // and a report under way
	in.mu.Unlock()
	return in.ended()
}

// report is the guard's timer: while a message is processed here it
// reports the stream's position, as the reader would. Once the stream is
// stopping it stops reporting: a handler that does not return then no
// longer holds the slot for good.
func (in *inliner) report() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.active.Load() || in.reportErr != nil || in.interrupted.Load() != nil || in.ctx.Err() != nil {
		return
	}
	if err := in.s.sendStatus(in.conn, false, 0); err != nil {
		in.reportErr = err
		return
	}
	in.timer.Reset(in.every)
}

// interrupt ends the session while a message is processed here: the
// connection is closed at once (PostgreSQL stops waiting for this
// client), the stream says it is not connected, and the reader returns
// err once the handler returns. It does not wait for a report being
// written: closing the connection ends that write.
func (in *inliner) interrupt(err error) {
	in.imu.Lock()
	defer in.imu.Unlock()
	if !in.active.Load() || !in.interrupted.CompareAndSwap(nil, &err) {
		return
	}
	in.s.connected.Store(false)
	in.s.setProblem(err)
	_ = in.conn.Conn().Close()
}
