package fanout

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// errAnswerLost is what a claim whose answer lossyStore dropped returns.
var errAnswerLost = errors.New("the claim's answer was lost")

// lossyStore is the real journal, except that it drops the answer of a
// claim or a manual retry's claim when told to, after the claim
// committed: what a connection that breaks at that moment does.
type lossyStore struct {
	*journal.Store
	loseClaim, loseRetry atomic.Bool
}

func (s *lossyStore) Claim(ctx context.Context, wants []journal.ClaimWant, owner, token string, staleAfter time.Duration) ([]journal.Claimed, error) {
	c, err := s.Store.Claim(ctx, wants, owner, token, staleAfter)
	if err == nil && s.loseClaim.Swap(false) {
		return nil, errAnswerLost
	}
	return c, err
}

func (s *lossyStore) ClaimForRetry(ctx context.Context, id, owner, token string, staleAfter time.Duration) (journal.Claimed, error) {
	c, err := s.Store.ClaimForRetry(ctx, id, owner, token, staleAfter)
	if err == nil && s.loseRetry.Swap(false) {
		return journal.Claimed{}, errAnswerLost
	}
	return c, err
}

// start runs a journal writer on store and a dispatcher on it, as the
// engine does; the test's cleanup stops the dispatcher, then the writer.
func start(t *testing.T, store *journal.Store, cfg Config) *Dispatcher {
	t.Helper()
	d, stop := startStoppable(t, store, cfg)
	t.Cleanup(stop)
	return d
}

// startStoppable is start, stopped by the function it returns (at most
// once; the test's cleanup does not stop it).
func startStoppable(t *testing.T, store *journal.Store, cfg Config) (*Dispatcher, func()) {
	t.Helper()
	return startRecordingThrough(t, store, cfg, nil)
}

// startRecordingThrough is startStoppable with the dispatcher recording
// through wrap(the writer) when wrap is not nil.
func startRecordingThrough(t *testing.T, store *journal.Store, cfg Config, wrap func(Recorder) Recorder) (*Dispatcher, func()) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testutil.Logger(t)
	}
	var d *Dispatcher
	w, err := journal.NewWriter(journal.WriterConfig{Store: store, Owner: cfg.Instance, Logger: cfg.Logger,
		OnSpill: func() { d.Spilled() }})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Records = w
	if wrap != nil {
		cfg.Records = wrap(w)
	}
	if d, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	wctx, stopWriter := context.WithCancel(context.Background())
	wdone := make(chan error, 1)
	go func() { wdone <- w.Run(wctx) }()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	return d, sync.OnceFunc(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Dispatcher.Run: %v", err)
		}
		stopWriter()
		if err := <-wdone; err != nil {
			t.Errorf("Writer.Run: %v", err)
		}
	})
}
