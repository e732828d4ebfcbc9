package mapping

import (
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/ids"
)

func TestTimeRemaining(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{150 * time.Minute, "2h 30m"},
		{2 * time.Hour, "2h"},
		{2*time.Hour + 59*time.Second, "2h"},
		{45*time.Minute + 30*time.Second, "45m"},
		{time.Minute, "1m"},
		{59 * time.Second, "<1m"},
		{0, "<1m"},
		{-time.Hour, "<1m"},
		{28 * time.Hour, "1d 4h"},
		{24*time.Hour + 30*time.Minute, "1d"},
		{50 * 24 * time.Hour, "50d"},
	} {
		if got := TimeRemaining(tc.d); got != tc.want {
			t.Errorf("TimeRemaining(%s) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestSLATimers(t *testing.T) {
	start := time.Date(2024, 1, 15, 8, 0, 0, 0, time.UTC)
	target := start.Add(10 * time.Hour)
	base := Timer{SLAID: "7", RequestID: "123", SLAType: "resolution", StartedAt: start, TargetAt: target}
	got := SLATimers(base, []float64{50, 75}, start, start)
	if len(got) != 3 || got[0].Kind != "warning:50" || !got[0].FireAt.Equal(start.Add(5*time.Hour)) ||
		got[1].Kind != "warning:75" || !got[1].FireAt.Equal(start.Add(450*time.Minute)) || got[2].Kind != "breach" || !got[2].FireAt.Equal(target) {
		t.Errorf("timers = %+v", got)
	}
	// Already breached when armed: only the breach.
	if got := SLATimers(base, []float64{75}, target.Add(time.Minute), target); len(got) != 1 || got[0].Kind != "breach" {
		t.Errorf("late timers = %+v", got)
	}
	m := NewMapper(MapperConfig{Mapping: DefaultConfig(), Source: ids.NewSource("1")})
	w := m.SLAEvent(got[2])
	if w.Type != "sla.breach" {
		t.Errorf("breach event type %s", w.Type)
	}
	warn := SLATimers(base, []float64{75}, start, time.Time{})[0]
	ev := m.SLAEvent(warn)
	want := `{"id":"` + ev.ID + `","event":"sla.warning","timestamp":"2024-01-15T15:30:00Z","data":{"requestId":"req_123","slaType":"resolution","targetTime":"2024-01-15T18:00:00Z","percentElapsed":75,"timeRemaining":"2h 30m"}}`
	if string(ev.Body) != want {
		t.Errorf("warning event:\n got %s\nwant %s", ev.Body, want)
	}
	if again := m.SLAEvent(warn); again.ID != ev.ID || string(again.Body) != string(ev.Body) {
		t.Error("firing the same timer twice gives another event")
	}
	moved := warn
	moved.TargetAt = moved.TargetAt.Add(time.Hour)
	if m.SLAEvent(moved).ID == ev.ID {
		t.Error("a moved target gives the same event id")
	}

	// The target moved closer at 16:20, past the 50% and 75% moments
	// (13:00 and 15:30 of the new span): the 75% warning is due at the
	// move, saying the share elapsed then, and the 50% one is not armed.
	// Found due at once it was skipped as late: no warning before the
	// breach.
	closer := base
	closer.TargetAt = start.Add(10 * time.Hour)
	shaped := start.Add(8*time.Hour + 20*time.Minute)
	got = SLATimers(closer, []float64{50, 75}, shaped, shaped)
	if len(got) != 2 || got[0].Kind != "warning:75" || !got[0].FireAt.Equal(shaped) || got[1].Kind != "breach" {
		t.Fatalf("timers armed past their moments = %+v, want warning:75 at %s and the breach", got, shaped)
	}
	ev = m.SLAEvent(got[0])
	if !strings.Contains(string(ev.Body), `"percentElapsed":83.3,"timeRemaining":"1h 40m"`) || !strings.Contains(string(ev.Body), `"timestamp":"2024-01-15T16:20:00Z"`) {
		t.Errorf("warning due at the move: %s", ev.Body)
	}
	if ev.ID != m.SLAEvent(Timer{SLAID: "7", Kind: "warning:75", TargetAt: closer.TargetAt}).ID {
		t.Error("the warning's id depends on when it is due")
	}
}
