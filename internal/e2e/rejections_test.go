package e2e

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/testutil"
)

// TestRejectionRecordedOnceAfterACrash: a transaction with an outbox row
// that is rejected (an undeclared event) and a request whose first
// attempt is in flight, so the transaction is not checkpointed yet;
// killed then, the next start streams the transaction again. Its events
// and deliveries are found by their ids; its rejection was recorded a
// second time (found by a review). Each rejection is now keyed by its
// change's position (journal version 22).
func TestRejectionRecordedOnceAfterACrash(t *testing.T) {
	db := newDB(t)
	rc := testutil.NewReceiver(t)
	release := make(chan struct{})
	rc.SetRespond(func(n int, r *http.Request, body []byte) (int, http.Header, string) {
		if n == 1 {
			// The first attempt stays in flight until the process is
			// killed: its delivery is held, and the transaction with it.
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		return http.StatusOK, nil, "ok"
	})
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // before the receiver's Close, which waits for its handlers
	cfg := writeConfig(t, db, rc.URL, "  retry_schedule: [0s, 300ms, 1s]")
	setup(t, cfg)
	p := startDzhook(t, cfg)
	db.Exec(t, `BEGIN; INSERT INTO dzhook_outbox (event, payload) VALUES ('no.such_event', '{}'); INSERT INTO requests (id, title, requester_id) VALUES (1, 'x', 1); COMMIT;`)
	testutil.Eventually(t, 30*time.Second, "the rejection journaled and the first attempt in flight", func() bool {
		return queryInt(t, db, `SELECT count(*) FROM dzhook.rejections`) == 1 && len(rc.Requests()) >= 1
	})
	p.kill()
	commit := queryInt(t, db, `SELECT commit_lsn FROM dzhook.rejections`)
	if cp := queryInt(t, db, `SELECT coalesce(max(lsn), 0) FROM dzhook.checkpoints`); cp >= commit {
		t.Fatalf("the checkpoint (%d) passed the transaction (%d) before the kill: nothing to stream again, the test proves nothing", cp, commit)
	}
	unblock()

	p = startDzhook(t, cfg)
	// The checkpoint past the transaction: the new process streamed it
	// again and journaled it, its rejection written before its commit.
	waitOrDiagnose(t, db, 30*time.Second, "the transaction journaled again", func() bool {
		return queryInt(t, db, `SELECT coalesce(max(lsn), 0) FROM dzhook.checkpoints`) >= commit
	})
	if n := queryInt(t, db, `SELECT count(*) FROM dzhook.rejections`); n != 1 {
		t.Errorf("one rejected outbox row recorded %d times after a crash, want once", n)
	}
	rc.Wait(t, 2, 30*time.Second) // the request's event, attempted again
	if err := p.stop(t); err != nil {
		t.Errorf("dzhook exited with %v after SIGTERM, want 0", err)
	}
}
