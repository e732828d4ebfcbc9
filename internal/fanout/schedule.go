package fanout

import (
	"cmp"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dzdesk/dzhook/internal/journal"
)

// The scheduler: due work waits in the journal (retries, deliveries that
// found their queue full, deliveries released by a reload, a resume or a
// dead instance), and the scheduler claims it into the subscriptions'
// queues when they have room, every PollInterval or when nudged.

// scheduleLoop claims due deliveries until ctx ends.
func (d *Dispatcher) scheduleLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.wake:
		}
		d.releaseLost(ctx)
		if err := d.syncOrder(ctx, true); err != nil && ctx.Err() == nil {
			d.log.Warn("reading the ordered keys' backlog failed; retrying", "err", err)
		}
		for _, s := range d.reg.Load().subs {
			if ctx.Err() != nil {
				return
			}
			if !s.accepting() {
				continue
			}
			if err := d.claim(ctx, s); err != nil && ctx.Err() == nil {
				d.log.Warn("claiming due deliveries failed; retrying", "subscription", s.cfg.ID, "err", err)
			}
		}
	}
}

// claim takes due deliveries of one subscription, up to half the room
// left in its queue (reserved first, so nothing claimed is left without a
// place; only half, so the stream's own deliveries still find room while
// the claim runs).
func (d *Dispatcher) claim(ctx context.Context, s *sub) error {
	free := s.size - s.reserved.Load()
	if free < 2 {
		return nil
	}
	n := s.reserve(min(free/2, 1024))
	token := claimToken()
	claimed, err := d.cfg.Journal.Claim(ctx, s.cfg.ID, int(n), d.cfg.Instance, token, 3*d.cfg.Heartbeat)
	s.release(n - int64(len(claimed)))
	if err != nil {
		d.lost.failed(s.cfg.ID, "", token, err)
		return err
	}
	var giveBack []*task
	for _, c := range claimed {
		trigger := journal.TriggerAuto
		if c.Manual {
			trigger = journal.TriggerManual
		}
		t := &task{deliveryID: c.ID, eventID: c.EventID, eventType: c.EventType, body: c.Body, attempts: c.Attempts, trigger: trigger, test: c.Test}
		// A manual retry (retry-failed) steps outside the order: its key's
		// state does not count it.
		if c.Ordered && !c.Manual && s.ord != nil {
			t.ordered, t.key, t.claimed = true, c.OrderingKey, true
			s.ord.claimed(t)
		}
		if !s.enqueue(t) {
			// Retired by a reload or a shutdown since the claim began.
			giveBack = append(giveBack, t)
		}
	}
	if len(giveBack) > 0 {
		return d.giveBack(ctx, func() []string {
			if s.ord != nil {
				return s.ord.drained(giveBack)
			}
			ids := make([]string, len(giveBack))
			for i, t := range giveBack {
				ids[i] = t.deliveryID
			}
			return ids
		})
	}
	if len(claimed) == int(n) {
		s.backlog.Store(true)
		d.nudge() // there may be more
	} else {
		s.backlog.Store(false)
	}
	return nil
}

// claimToken marks the rows of one claim (journal.Claim).
func claimToken() string { return strconv.FormatUint(rand.Uint64(), 36) }

// lostClaims holds claims that failed: their UPDATE may have committed
// with the answer lost, leaving deliveries owned by this live instance
// and in no queue. The schedule loop gives them back.
type lostClaims struct {
	mu     sync.Mutex
	claims []journal.LostClaim
}

// failed remembers a claim that failed after it may have committed, so
// the next scheduling round gives back what it took. One entry per
// subscription or delivery, however many claims failed. It does not wake
// the scheduler: a claim failing again at once would make it spin.
func (l *lostClaims) failed(subscription, delivery, token string, err error) bool {
	if !mayHaveCommitted(err) {
		return false
	}
	l.mu.Lock()
	l.add(subscription, delivery, token)
	l.mu.Unlock()
	return true
}

func (l *lostClaims) add(subscription, delivery, token string) {
	i := slices.IndexFunc(l.claims, func(c journal.LostClaim) bool { return c.Subscription == subscription && c.Delivery == delivery })
	if i < 0 {
		l.claims = append(l.claims, journal.LostClaim{Subscription: subscription, Delivery: delivery})
		i = len(l.claims) - 1
	}
	l.claims[i].Tokens = append(l.claims[i].Tokens, token)
}

func (l *lostClaims) take() []journal.LostClaim {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.claims
	l.claims = nil
	return c
}

// mayHaveCommitted reports whether a statement that failed may have
// committed all the same: not when the server refused it with an ERROR
// (one statement is its own transaction, rolled back) nor when it was
// never sent. A FATAL or PANIC says nothing about the statement: a pooler
// such as pgbouncer sends one when its server connection broke, after
// the commit or before it.
func mayHaveCommitted(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return cmp.Or(pgErr.SeverityUnlocalized, pgErr.Severity) != "ERROR"
	}
	var connErr *pgconn.ConnectError
	return !errors.As(err, &connErr) && !pgconn.SafeToRetry(err)
}

// releaseLost gives back what failed claims took; a release that fails is
// tried again on the next round.
func (d *Dispatcher) releaseLost(ctx context.Context) {
	lost := d.lost.take()
	for i, c := range lost {
		n, err := d.cfg.Journal.ReleaseLost(ctx, d.cfg.Instance, c)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Warn("could not give back the deliveries of a failed claim; retrying", "err", err)
			}
			d.lost.mu.Lock()
			for _, again := range lost[i:] {
				for _, tok := range again.Tokens {
					d.lost.add(again.Subscription, again.Delivery, tok)
				}
			}
			d.lost.mu.Unlock()
			return
		}
		if n > 0 {
			d.log.Warn("a claim's answer was lost; its deliveries are claimed again", "deliveries", n, "subscription", c.Subscription, "delivery_id", c.Delivery)
		}
	}
}
