package fanout

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/testutil"
)

type downStore struct{}

func (downStore) Write(ctx context.Context, b *journal.Batch) error {
	return errors.New("journal unreachable")
}

// TestShutdownWithJournalUnreachable: with the journal unreachable and
// the writer's queue full, workers block putting their outcomes. The
// shutdown stops them after the delivery timeout (and gives up on the
// journal after the drain timeout) instead of waiting for ever: the
// engine stops the writer only after the dispatcher has returned.
func TestShutdownWithJournalUnreachable(t *testing.T) {
	store := newJournal(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { time.Sleep(300 * time.Millisecond) }))
	defer srv.Close()
	w, err := journal.NewWriter(journal.WriterConfig{Store: downStore{}, Owner: "i1", QueueSize: 2, DrainTimeout: 500 * time.Millisecond, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{
		Subscriptions: []Subscription{{ID: "crm", URL: srv.URL, Events: []string{"*"}, Secret: []byte("secret-secret-secret"), Active: true}},
		Journal:       store, Records: w, Instance: "i1", Timeout: time.Second, Logger: testutil.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopWriter := context.WithCancel(context.Background())
	writerDone := make(chan error, 1)
	go func() { writerDone <- w.Run(wctx) }()
	// As the engine does: the writer stops after the dispatcher, and the
	// test waits for it (it logs until it returns).
	defer func() {
		stopWriter()
		<-writerDone
	}()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	sctx, stopStream := context.WithCancel(context.Background())
	go func() {
		for _, ev := range orderEvents([]string{"a", "b", "c", "d", "e", "f", "g", "h"}) {
			if err := d.Dispatch(sctx, ev); err != nil {
				return
			}
		}
	}()
	time.Sleep(time.Second) // fault injection: let the outcomes fill the writer's queue
	stopStream()            // the stream stops first (same errgroup context in the engine)
	stop()
	select {
	case <-done:
		t.Log("Dispatcher.Run returned")
	case <-time.After(60 * time.Second):
		t.Error("Dispatcher.Run did not return 60 s after cancellation: the engine would never stop the writer")
	}
}
