package journal

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestPruneKeepsAReplayStillGoing: retention keeps a replay, however long
// finished, while any of its deliveries waits (a paused subscription, a
// receiver down): pruned, GET and cancel answered 404 and a second replay
// of its window was accepted, sending each event twice. Once none waits,
// it goes. Found by a review.
func TestPruneKeepsAReplayStillGoing(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	if err := s.Write(ctx, batchOf(0, 3)); err != nil {
		t.Fatal(err)
	}
	req := ReplayRequest{ID: "rpl_1", Subscription: "erp", Since: time.Now().Add(-time.Hour), Until: time.Now().Add(time.Minute),
		Types: []string{"request.created"}, RequestedBy: "test"}
	r, _, err := s.CreateReplay(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := s.StepReplay(ctx, r.ID, 10, 100, replayTo(time.Now().Add(time.Hour))); err != nil || !st.Done {
		t.Fatalf("StepReplay = %+v, %v; want done", st, err)
	}
	// Its deliveries wait past journal.retention (here an hour; the
	// replay finished two hours ago).
	db.Exec(t, `UPDATE dzhook.replays SET finished_at = now() - interval '2 hours'`)
	if _, err := s.PruneStep(ctx, time.Now().Add(-time.Hour), 100); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetReplay(ctx, "erp", "rpl_1"); err != nil {
		t.Errorf("GetReplay of a replay whose deliveries wait, after a prune: %v", err)
	}
	req.ID = "rpl_2"
	var oe *ReplayOverlapError
	if _, _, err := s.CreateReplay(ctx, req); !errors.As(err, &oe) || oe.Running.ID != "rpl_1" {
		t.Errorf("a replay overlapping one whose deliveries wait, after a prune: %v, want refused naming rpl_1", err)
	}
	// Delivered: nothing waits, and the replay goes with the next prune.
	db.Exec(t, `UPDATE dzhook.deliveries SET state = 'delivered' WHERE replay_id = 'rpl_1'`)
	if _, err := s.PruneStep(ctx, time.Now().Add(-time.Hour), 100); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetReplay(ctx, "erp", "rpl_1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetReplay of a replay finished past the retention, nothing waiting: %v, want ErrNotFound", err)
	}
}
