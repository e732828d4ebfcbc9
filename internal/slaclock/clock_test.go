package slaclock

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/fanout"
	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/journal"
	"github.com/dzdesk/dzhook/internal/mapping"
)

// fakeStore is the journal side of the clock: the due timers it hands
// out once, and what the clock recorded.
type fakeStore struct {
	due          []journal.TimerRow
	known        map[string]bool // journaled event ids
	bootstrapped bool
	armed        []journal.TimerChange
	armDone      bool
	cancelled    []string // "sla kind"
	deferred     []string // "sla kind"
	fired        []string
	marks        int64              // TimerMark's answers: 1, 2, 3...
	starts       []int64            // the start mark of each ArmBootstrap
	armedMissing []journal.TimerRow // by ArmThresholds
}

func (s *fakeStore) SLABootstrapped(context.Context, string) (bool, error) {
	return s.bootstrapped, nil
}

func (s *fakeStore) TimerMark(context.Context) (int64, error) {
	s.marks++
	return s.marks, nil
}

func (s *fakeStore) ArmBootstrap(_ context.Context, _ string, changes []journal.TimerChange, done bool, _, start int64) error {
	s.starts = append(s.starts, start)
	s.armed = append(s.armed, changes...)
	s.armDone = done
	return nil
}

func (s *fakeStore) ArmThresholds(_ context.Context, _, _ string, timers []journal.TimerRow) (int, error) {
	s.armedMissing = append(s.armedMissing, timers...)
	return len(timers), nil
}

func (s *fakeStore) ClaimTimers(context.Context, int, time.Duration) ([]journal.TimerRow, error) {
	due := s.due
	s.due = nil
	return due, nil
}

func (s *fakeStore) TimerCancelled(_ context.Context, t journal.TimerRow) error {
	s.cancelled = append(s.cancelled, t.SLAID+" "+t.Kind)
	return nil
}

func (s *fakeStore) TimerDeferred(_ context.Context, t journal.TimerRow, _ time.Duration) error {
	s.deferred = append(s.deferred, t.SLAID+" "+t.Kind)
	return nil
}

func (s *fakeStore) TimerDone(_ context.Context, t journal.TimerRow, outcome string) error {
	s.fired = append(s.fired, t.SLAID+" "+t.Kind+" "+outcome)
	return nil
}

func (s *fakeStore) EventExists(_ context.Context, id string) (bool, error) { return s.known[id], nil }

// fakeSource is the SLA table.
type fakeSource struct{ rows []mapping.SLARow }

func (f fakeSource) OpenSLAs(_ context.Context, after string, limit int) ([]mapping.SLARow, error) {
	var out []mapping.SLARow
	for _, r := range f.rows {
		if r.ID > after && !r.Completed && len(out) < limit {
			out = append(out, r)
		}
	}
	return out, nil
}

func (f fakeSource) Current(_ context.Context, ids []string) (map[string]mapping.SLARow, error) {
	out := map[string]mapping.SLARow{}
	for _, r := range f.rows {
		if slices.Contains(ids, r.ID) {
			out[r.ID] = r
		}
	}
	return out, nil
}

type fakeDispatcher struct{ events []fanout.Event }

func (d *fakeDispatcher) DispatchDurable(_ context.Context, ev fanout.Event) error {
	d.events = append(d.events, ev)
	return nil
}

func newClock(t *testing.T, store *fakeStore, src fakeSource, d *fakeDispatcher, mapper *mapping.Mapper) *Clock {
	t.Helper()
	return newClockOn(t, store, src, d, mapper)
}

// newClockOn is newClock on any Source.
func newClockOn(t *testing.T, store *fakeStore, src Source, d *fakeDispatcher, mapper *mapping.Mapper) *Clock {
	t.Helper()
	c, err := New(Config{
		Store: store, Source: src, Events: mapper, Dispatcher: d, Slot: "dzhook",
		WarningPercent: []float64{75}, SLATypes: map[string]string{"res": "resolution"},
		CheckInterval: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestFireDue: a due timer fires when its SLA is still open at the same
// target, or was completed after the timer's moment, or when the stream
// kept it past a move or a completion it was due before (its own target
// in the event); it is cancelled when its SLA is deleted or completed
// before its moment, or its kind is no longer configured; it waits for
// the stream when its SLA moved, or completed at a moment the table does
// not say, in a change the stream has not marked it for. One whose event
// the journal already has (fired before a crash) is marked fired without
// a second dispatch. A warning found due after its target (dzhook was
// down across both) is not sent: the breach is.
func TestFireDue(t *testing.T) {
	start := time.Now().UTC().Truncate(time.Second).Add(-3 * time.Hour)
	target := start.Add(4 * time.Hour)
	open := func(id string) mapping.SLARow {
		return mapping.SLARow{ID: id, RequestID: id, SLAType: "resolution", StartedAt: start, TargetAt: target}
	}
	completed := open("completed")
	completedAt := start.Add(time.Hour)
	completed.Completed, completed.CompletedAt = true, &completedAt
	completedSomewhen := open("somewhen") // completed_at is not a time
	completedSomewhen.Completed = true
	moved := open("moved")
	moved.TargetAt = target.Add(time.Hour)
	kept, keptLater := open("kept"), open("keptlater")
	kept.TargetAt, keptLater.TargetAt = target.Add(time.Hour), target.Add(time.Hour)
	late := open("late")
	late.StartedAt, late.TargetAt = start.Add(-5*time.Hour), start.Add(-time.Hour)
	src := fakeSource{rows: []mapping.SLARow{open("warn"), open("breach"), open("again"), open("removed"), completed, completedSomewhen, moved, late, kept, keptLater}}
	timer := func(id, kind string) journal.TimerRow {
		return journal.TimerRow{SLAID: id, Kind: kind, RequestID: id, SLAType: "resolution", StartedAt: start, TargetAt: target, FireAt: target}
	}
	lateWarning := journal.TimerRow{SLAID: "late", Kind: "warning:75", RequestID: "late", SLAType: "resolution",
		StartedAt: late.StartedAt, TargetAt: late.TargetAt, FireAt: late.StartedAt.Add(3 * time.Hour)}
	// Kept by the stream: breached before its SLA moved (the breach of
	// the old target fires), and, which the stream does not keep,
	// superseded before its moment.
	breachedTarget := start.Add(time.Hour)
	keptBreach, keptLaterBreach := timer("kept", "breach"), timer("keptlater", "breach")
	keptBreach.TargetAt, keptBreach.FireAt, keptBreach.SupersededAt = breachedTarget, breachedTarget, breachedTarget.Add(time.Minute)
	keptLaterBreach.TargetAt, keptLaterBreach.FireAt, keptLaterBreach.SupersededAt = breachedTarget, breachedTarget, breachedTarget.Add(-time.Minute)
	lateBreach := lateWarning
	lateBreach.Kind, lateBreach.FireAt = "breach", late.TargetAt
	// A warning a few seconds before a target just passed (95% of a
	// five-minute SLA) is sent: a check or two late is not an outage.
	justLate := mapping.SLARow{ID: "just", RequestID: "just", SLAType: "resolution", StartedAt: time.Now().Add(-5 * time.Minute), TargetAt: time.Now().Add(-time.Second)}
	src.rows = append(src.rows, justLate)
	justWarning := journal.TimerRow{SLAID: "just", Kind: "warning:75", RequestID: "just", SLAType: "resolution",
		StartedAt: justLate.StartedAt, TargetAt: justLate.TargetAt, FireAt: justLate.TargetAt.Add(-15 * time.Second)}
	mapper := mapping.NewMapper(mapping.MapperConfig{Mapping: mapping.DefaultConfig(), Source: ids.NewSource("1")})
	firedBefore := mapper.SLAEvent(mapping.Timer{SLAID: "again", Kind: "breach", RequestID: "again", SLAType: "resolution",
		StartedAt: start, TargetAt: target, FireAt: target})
	store := &fakeStore{
		due: []journal.TimerRow{
			timer("warn", "warning:75"), timer("breach", "breach"), timer("again", "breach"),
			timer("removed", "warning:50"), timer("completed", "breach"), timer("somewhen", "breach"), timer("moved", "breach"), timer("deleted", "breach"),
			lateWarning, lateBreach, justWarning, keptBreach, keptLaterBreach,
		},
		known: map[string]bool{firedBefore.ID: true},
	}
	d := &fakeDispatcher{}
	if err := newClock(t, store, src, d, mapper).fireDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range d.events {
		got = append(got, ev.Type)
	}
	if want := []string{"sla.warning", "sla.breach", "sla.breach", "sla.warning", "sla.breach"}; !slices.Equal(got, want) {
		t.Errorf("dispatched %v, want %v", got, want)
	}
	if want := []string{"warn warning:75 fired", "breach breach fired", "again breach fired", "late warning:75 late", "late breach fired", "just warning:75 fired", "kept breach fired"}; !slices.Equal(store.fired, want) {
		t.Errorf("fired %v, want %v", store.fired, want)
	}
	if want := []string{"removed warning:50", "completed breach", "deleted breach", "keptlater breach"}; !slices.Equal(store.cancelled, want) {
		t.Errorf("cancelled %v, want %v", store.cancelled, want)
	}
	if want := []string{"somewhen breach", "moved breach"}; !slices.Equal(store.deferred, want) {
		t.Errorf("deferred %v, want %v", store.deferred, want)
	}
	// The kept breach reports the target it breached, not the SLA's new one.
	if body, want := string(d.events[len(d.events)-1].Body), `"breachedAt":"`+breachedTarget.Format(time.RFC3339)+`"`; !strings.Contains(body, want) {
		t.Errorf("kept breach %s, want %s", body, want)
	}
}

// TestBootstrapArmsOpenSLAs: at the first start on a slot, every open SLA
// gets its timers (SLA types translated), and the bootstrap is recorded
// as done; on a slot already bootstrapped nothing is armed.
func TestBootstrapArmsOpenSLAs(t *testing.T) {
	now := time.Now()
	src := fakeSource{rows: []mapping.SLARow{
		{ID: "1", RequestID: "10", SLAType: "res", StartedAt: now, TargetAt: now.Add(time.Hour)},
		{ID: "2", RequestID: "20", SLAType: "response", StartedAt: now, TargetAt: now.Add(time.Hour), Completed: true},
	}}
	mapper := mapping.NewMapper(mapping.MapperConfig{Mapping: mapping.DefaultConfig(), Source: ids.NewSource("1")})
	store := &fakeStore{}
	if err := newClock(t, store, src, &fakeDispatcher{}, mapper).bootstrap(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(store.armed) != 1 || !store.armDone {
		t.Fatalf("armed %+v (done %v), want the one open SLA and done", store.armed, store.armDone)
	}
	var kinds []string
	for _, r := range store.armed[0].Arm {
		kinds = append(kinds, r.Kind)
		if r.SLAType != "resolution" {
			t.Errorf("timer %s has SLA type %q, want the translated %q", r.Kind, r.SLAType, "resolution")
		}
	}
	if want := []string{"warning:75", "breach"}; !slices.Equal(kinds, want) {
		t.Errorf("armed kinds %v, want %v", kinds, want)
	}

	again := &fakeStore{bootstrapped: true}
	if err := newClock(t, again, src, &fakeDispatcher{}, mapper).bootstrap(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(again.armed) != 0 {
		t.Errorf("a bootstrapped slot armed %+v again", again.armed)
	}
}

// TestLongWaitSaidOnce: a timer waiting for the stream (its SLA moved in
// a change not read yet) long past its moment is said at WARN, once: it
// waited silently (DEBUG) for ever when the stream never settled it (a
// change it did not understand).
func TestLongWaitSaidOnce(t *testing.T) {
	due := time.Now().UTC().Truncate(time.Second).Add(-20 * time.Minute)
	moved := mapping.SLARow{ID: "moved", RequestID: "moved", SLAType: "resolution", StartedAt: due.Add(-time.Hour), TargetAt: due.Add(time.Hour)}
	recent := moved
	recent.ID = "recent"
	timer := func(id string, at time.Time) journal.TimerRow {
		return journal.TimerRow{SLAID: id, Kind: "breach", RequestID: id, SLAType: "resolution", StartedAt: moved.StartedAt, TargetAt: at, FireAt: at}
	}
	store := &fakeStore{}
	var logs bytes.Buffer
	mapper := mapping.NewMapper(mapping.MapperConfig{Mapping: mapping.DefaultConfig(), Source: ids.NewSource("1")})
	c := newClock(t, store, fakeSource{rows: []mapping.SLARow{moved, recent}}, &fakeDispatcher{}, mapper)
	c.log = slog.New(slog.NewTextHandler(&logs, nil))
	for range 3 {
		store.due = []journal.TimerRow{timer("moved", due), timer("recent", time.Now().Add(-time.Minute))}
		if err := c.fireDue(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(logs.String(), "level=WARN msg=\"SLA timer still waits"); n != 1 || !strings.Contains(logs.String(), "sla=moved") || strings.Contains(logs.String(), "sla=recent") {
		t.Errorf("%d WARN lines, want one naming the long-waiting timer only:\n%s", n, logs.String())
	}
	if len(store.deferred) != 6 {
		t.Errorf("deferred %v, want each timer deferred at each round", store.deferred)
	}
	// Settled (the stream kept it, superseded at the move), it is
	// forgotten: the set holds only timers still waiting.
	kept := timer("moved", due)
	kept.SupersededAt = due.Add(time.Minute)
	store.due = []journal.TimerRow{kept}
	if err := c.fireDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(c.waitSaid) != 0 {
		t.Errorf("timers remembered as said after they settled: %v", c.waitSaid)
	}
}

// failingSource fails its first scans.
type failingSource struct {
	fakeSource
	fails *int
}

func (f failingSource) OpenSLAs(ctx context.Context, after string, limit int) ([]mapping.SLARow, error) {
	if *f.fails > 0 {
		*f.fails--
		return nil, errors.New("connection reset")
	}
	return f.fakeSource.OpenSLAs(ctx, after, limit)
}

// TestScanRetryKeepsItsStart: a retried first-start scan judges timers by
// the generation read before its first try: read again at each try, a
// due timer the stream had armed since the first (before a move it had
// not read) counted as an earlier slot's and was deleted (found by a
// review, 2026-12-07).
func TestScanRetryKeepsItsStart(t *testing.T) {
	store := &fakeStore{}
	fails := 2
	src := failingSource{fakeSource: fakeSource{rows: []mapping.SLARow{{ID: "1", RequestID: "1", SLAType: "resolution",
		StartedAt: time.Now().Add(-time.Hour), TargetAt: time.Now().Add(time.Hour)}}}, fails: &fails}
	mapper := mapping.NewMapper(mapping.MapperConfig{Mapping: mapping.DefaultConfig(), Source: ids.NewSource("1")})
	c := newClockOn(t, store, src, &fakeDispatcher{}, mapper)
	for range 3 {
		_ = c.bootstrap(context.Background())
	}
	if !slices.Equal(store.starts, []int64{1}) || !store.armDone {
		t.Errorf("ArmBootstrap's start marks %v (done %v), want [1]: the first try's, after two failed tries", store.starts, store.armDone)
	}
}

// TestScanArmsNothingPastTheHorizon: the scan of open SLAs (a first
// start, or one asked for again after a failover) arms no timer whose
// moment is older than journal.retention: it fired or was missed then,
// and the journal has pruned what kept it from firing again. One within
// it is armed, a warning due at once.
func TestScanArmsNothingPastTheHorizon(t *testing.T) {
	now := time.Now()
	day := 24 * time.Hour
	src := fakeSource{rows: []mapping.SLARow{
		{ID: "breached", RequestID: "1", SLAType: "res", StartedAt: now.Add(-50 * day), TargetAt: now.Add(-40 * day)},
		{ID: "warned", RequestID: "2", SLAType: "res", StartedAt: now.Add(-140 * day), TargetAt: now.Add(5 * day)},
		{ID: "atrisk", RequestID: "3", SLAType: "res", StartedAt: now.Add(-60 * day), TargetAt: now.Add(10 * day)},
	}}
	mapper := mapping.NewMapper(mapping.MapperConfig{Mapping: mapping.DefaultConfig(), Source: ids.NewSource("1")})
	store := &fakeStore{}
	c, err := New(Config{
		Store: store, Source: src, Events: mapper, Dispatcher: &fakeDispatcher{}, Slot: "dzhook",
		WarningPercent: []float64{75}, CheckInterval: time.Second, ArmHorizon: 30 * day,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.bootstrap(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, ch := range store.armed {
		for _, r := range ch.Arm {
			got[ch.SLAID] = append(got[ch.SLAID], r.Kind)
			if r.Kind == "warning:75" && r.FireAt.Before(now) {
				t.Errorf("%s's warning due at %s, before the scan", ch.SLAID, r.FireAt)
			}
		}
	}
	want := map[string][]string{"warned": {"breach"}, "atrisk": {"warning:75", "breach"}}
	if len(got["breached"]) != 0 || !slices.Equal(got["warned"], want["warned"]) || !slices.Equal(got["atrisk"], want["atrisk"]) {
		t.Errorf("armed %v, want %v (nothing for the SLA breached 40 days ago, no warning 35 days late)", got, want)
	}
}

// slowScan is an SLA table whose read of the open SLAs waits until
// released (or its context ends).
type slowScan struct {
	fakeSource
	release chan struct{}
}

func (s slowScan) OpenSLAs(ctx context.Context, after string, limit int) ([]mapping.SLARow, error) {
	select {
	case <-s.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.fakeSource.OpenSLAs(ctx, after, limit)
}

// sentDispatcher tells of each event dispatched.
type sentDispatcher struct{ sent chan string }

func (d sentDispatcher) DispatchDurable(_ context.Context, ev fanout.Event) error {
	d.sent <- ev.Type
	return nil
}

// TestDueTimersDoNotWaitForTheScan: at a start, a timer that fell due
// while dzhook was down fires while the read of every open SLA (the
// thresholds they lack, here) is still going: the first round of due
// timers came after it (found by a review).
func TestDueTimersDoNotWaitForTheScan(t *testing.T) {
	start := time.Now().UTC().Add(-2 * time.Hour)
	target := start.Add(time.Hour)
	row := mapping.SLARow{ID: "1", RequestID: "1", SLAType: "resolution", StartedAt: start, TargetAt: target}
	store := &fakeStore{bootstrapped: true, due: []journal.TimerRow{{SLAID: "1", Kind: "breach", RequestID: "1", SLAType: "resolution", StartedAt: start, TargetAt: target, FireAt: target}}}
	src := slowScan{fakeSource: fakeSource{rows: []mapping.SLARow{row}}, release: make(chan struct{})}
	d := sentDispatcher{sent: make(chan string, 1)}
	c, err := New(Config{
		Store: store, Source: src, Events: mapping.NewMapper(mapping.MapperConfig{Mapping: mapping.DefaultConfig(), Source: ids.NewSource("1")}),
		Dispatcher: d, Slot: "dzhook", WarningPercent: []float64{75}, CheckInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	select {
	case ev := <-d.sent:
		if ev != "sla.breach" {
			t.Errorf("dispatched %s, want the due sla.breach", ev)
		}
	case <-time.After(10 * time.Second):
		t.Error("the due breach did not fire while the open SLAs were being read")
	}
	close(src.release)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
