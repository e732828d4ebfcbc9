package mapping

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dzdesk/dzhook/internal/catalog"
	"github.com/dzdesk/dzhook/internal/cdc"
)

// This file is the pure part of the SLA clock: what a change of the SLA
// table arms or cancels, when each event is due, and what it says. The
// clock itself (durable timers in the journal, claimed by whichever
// dzhook instance is free) runs in the engine.

// Timer is one SLA event to fire at a moment.
type Timer struct {
	SLAID     string
	Kind      string // "warning:<percent>" or "breach"
	RequestID string // as stored, without prefix
	SLAType   string // translated
	StartedAt time.Time
	TargetAt  time.Time
	FireAt    time.Time
}

// SLAUpdate is what one change of the SLA table means for its timers.
type SLAUpdate struct {
	SLAID string
	// Arm are the timers of the SLA's current target (none when it is
	// completed or deleted).
	Arm []Timer
	// Keep is the target whose timers stay; unfired timers of any other
	// target are cancelled. Zero cancels every unfired timer of the SLA.
	Keep time.Time
	// Due is when the SLA's earlier target stopped counting: for a
	// completed SLA, when it was completed (the change's commit time when
	// completed_at is not a time); for an open one, the change's commit
	// time (a moved target). Its unfired timers of another target (all of
	// them, completed) due before then are kept, and fire: it was
	// breached (or warned) first, and the stream or a restart can reach
	// the change before the clock fired them. Zero: none is kept.
	Due time.Time
}

// WarningKind is the timer kind of a warning threshold.
func WarningKind(percent float64) string {
	return "warning:" + strconv.FormatFloat(percent, 'f', -1, 64)
}

// warningPercent reads the threshold back from a kind.
func warningPercent(kind string) (float64, bool) {
	p, ok := strings.CutPrefix(kind, "warning:")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseFloat(p, 64)
	return v, err == nil
}

// SLATimers returns the timers an open SLA needs: one warning per
// threshold (at that share of started → target) and the breach (at the
// target). A warning whose moment is already past when the target is
// also past is not armed: the breach says more.
//
// shaped is when the SLA took this target (its change's commit; zero:
// unknown). A warning whose moment came before that (a target moved
// closer, an SLA recorded already at risk) is due at it, the highest
// such threshold only: its moment never came while the SLA had this
// target, and found due at once it was skipped as late, the request
// breaching with no warning (found by a review). A commit long past (the
// stream catching up after dzhook was down) makes it late all the same,
// as any warning whose moment passed meanwhile.
func SLATimers(base Timer, thresholds []float64, now, shaped time.Time) []Timer {
	var out []Timer
	span := base.TargetAt.Sub(base.StartedAt)
	for i, p := range thresholds {
		if span <= 0 || !base.TargetAt.After(now) {
			break
		}
		t := base
		t.Kind = WarningKind(p)
		t.FireAt = warningMoment(base, p)
		if !shaped.IsZero() && t.FireAt.Before(shaped) {
			if i+1 < len(thresholds) && warningMoment(base, thresholds[i+1]).Before(shaped) {
				continue // a higher one is due at it too: that one says it
			}
			t.FireAt = shaped
		}
		out = append(out, t)
	}
	b := base
	b.Kind, b.FireAt = "breach", base.TargetAt
	return append(out, b)
}

// Moment is when t's kind is reached for its SLA: the target for the
// breach, the threshold's share of started → target for a warning. A
// warning can be due later (FireAt: SLATimers), never earlier.
func (t Timer) Moment() time.Time {
	if p, ok := warningPercent(t.Kind); ok {
		return warningMoment(t, p)
	}
	return t.TargetAt
}

// warningMoment is when threshold p (a percentage) of t's SLA is reached.
func warningMoment(t Timer, p float64) time.Time {
	return t.StartedAt.Add(time.Duration(float64(t.TargetAt.Sub(t.StartedAt)) * p / 100))
}

// SLAChange reads a change of the SLA table: the timers to arm and the
// ones to cancel. ok is false for a change it cannot read (a column
// missing or not a time), which it reports as err.
func (m *Mapper) SLAChange(c *cdc.Change, thresholds []float64, now time.Time) (SLAUpdate, error) {
	sc := m.cfg.SLAs.Columns
	switch c.Op {
	case cdc.OpDelete:
		return SLAUpdate{SLAID: idOf(c, c.Old, sc.ID)}, nil
	case cdc.OpTruncate:
		return SLAUpdate{}, nil
	}
	id := idOf(c, c.New, sc.ID)
	up := SLAUpdate{SLAID: id}
	if v, ok := col(c, c.New, sc.CompletedAt); !ok || v.State != cdc.Null {
		if !ok && c.Op == cdc.OpUpdate {
			// An unchanged TOAST value cannot be a timestamp; a missing
			// column is a mapping mistake the catalog check reports.
			return up, fmt.Errorf("SLA %s: no %s column in the change", id, sc.CompletedAt)
		}
		// Completed: cancel what was not due yet. A completed_at that is
		// not a time says only that it was, by the change's commit at the
		// latest.
		up.Due = c.CommitTime
		if at, err := timeOf(c, c.New, sc.CompletedAt); err == nil && (up.Due.IsZero() || at.Before(up.Due)) {
			up.Due = at // not completed in the future: when it was written
		}
		return up, nil
	}
	// Open: whatever its target now, the timers of an earlier one due
	// before this change are kept (it was breached or warned before it
	// moved); the later ones are cancelled.
	up.Due = c.CommitTime
	started, err1 := timeOf(c, c.New, sc.StartedAt)
	target, err2 := timeOf(c, c.New, sc.TargetAt)
	if errors.Is(err2, errNotRFC3339) {
		// No sla.* event could show its target: arm nothing, and cancel
		// what an earlier target armed and was not due yet.
		m.log.Warn("SLA target is not a time RFC 3339 can show (infinity, or a year outside 1 to 9999); its timers are cancelled",
			"table", c.Relation.QualifiedName(), "id", id, "column", sc.TargetAt, "lsn", c.CommitLSN.String())
		return up, nil
	}
	if errors.Is(err1, errNotRFC3339) && err2 == nil {
		// Warnings are shares of started → target: without a start only
		// the breach can be armed.
		m.log.Warn("SLA start is not a time RFC 3339 can show (infinity, or a year outside 1 to 9999); only its breach is armed",
			"table", c.Relation.QualifiedName(), "id", id, "column", sc.StartedAt, "lsn", c.CommitLSN.String())
		started, err1 = target, nil
	}
	if err1 != nil || err2 != nil {
		return up, fmt.Errorf("SLA %s: %v", id, firstErr(err1, err2))
	}
	slaType := ""
	if v, ok := col(c, c.New, sc.SLAType); ok && v.State == cdc.Present {
		slaType = text(v.V)
		if t, ok := m.cfg.SLAs.Values.SLAType[slaType]; ok {
			slaType = t
		}
	}
	base := Timer{SLAID: id, RequestID: idOf(c, c.New, sc.Request), SLAType: slaType, StartedAt: started, TargetAt: target}
	// The SLA took this target at this change when it is new, or moved
	// to it here; otherwise it took it earlier, at a moment the change
	// does not say, and a warning whose threshold passed since was sent
	// then (or missed while dzhook was down): not due again now.
	shaped := c.CommitTime
	if c.Op == cdc.OpUpdate {
		// Moved, but the threshold passed at this target was passed at
		// the old one too (a target extended): its warning was due then,
		// and sent again now under the new target's id it warned twice
		// (found by a review). Not shaped either.
		if old, err := timeOf(c, c.Old, sc.TargetAt); c.Old == nil || err == nil && (old.Equal(target) ||
			reachedBefore(base, old, c, sc.StartedAt, thresholds, shaped)) {
			shaped = time.Time{}
		}
	}
	up.Arm = SLATimers(base, thresholds, now, shaped)
	if at := breachedHere(c, sc, target); !at.IsZero() {
		for i := range up.Arm {
			if up.Arm[i].Kind == "breach" {
				up.Arm[i].FireAt = at
			}
		}
	}
	if c.Op == cdc.OpUpdate && shaped.IsZero() && !c.CommitTime.IsZero() {
		// A change that did not give the SLA this target (or gave it
		// one whose passed thresholds the old one had passed too) arms
		// no warning whose moment came before it: one was armed when
		// that moment was ahead, and sent. Armed again at its moment, a
		// moment ago, the clock did not find it late yet and sent it
		// again: after an extension, at the extension or at any later
		// change of the SLA, where nothing had armed it for the new
		// target (found by two reviews).
		up.Arm = slices.DeleteFunc(up.Arm, func(t Timer) bool { return t.Kind != "breach" && t.FireAt.Before(c.CommitTime) })
	}
	up.Keep = target
	return up, nil
}

// breachedHere is the moment of the breach when this change made an SLA
// whose target is already past breached (zero: at its target, as usual):
// reopened after its target (its old row completed), or its target moved
// from ahead of the change to before it. Until the change the SLA was met,
// or not yet due: breached at its commit, not at the target, a moment it
// was not breached at (found by a review). Told by the SLA table's old
// row (REPLICA IDENTITY FULL); without it, the target.
func breachedHere(c *cdc.Change, sc SLAColumns, target time.Time) time.Time {
	if c.Op != cdc.OpUpdate || c.CommitTime.IsZero() || !target.Before(c.CommitTime) {
		return time.Time{}
	}
	if v, ok := col(c, c.Old, sc.CompletedAt); ok && v.State == cdc.Present {
		return c.CommitTime // reopened
	}
	if old, err := timeOf(c, c.Old, sc.TargetAt); err == nil && old.After(c.CommitTime) {
		return c.CommitTime // moved closer, into the past
	}
	return time.Time{}
}

// reachedBefore reports whether the highest threshold base has passed at
// the moment at (the one SLATimers would make due then) was passed at
// the SLA's old target too: with its old start, or base's when the
// change does not carry it.
func reachedBefore(base Timer, oldTarget time.Time, c *cdc.Change, startCol string, thresholds []float64, at time.Time) bool {
	oldBase := base
	oldBase.TargetAt = oldTarget
	if s, err := timeOf(c, c.Old, startCol); err == nil {
		oldBase.StartedAt = s
	}
	if !oldBase.TargetAt.After(oldBase.StartedAt) {
		return false
	}
	for i := len(thresholds) - 1; i >= 0; i-- {
		if p := thresholds[i]; warningMoment(base, p).Before(at) {
			return !warningMoment(oldBase, p).After(at)
		}
	}
	return false
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func timeOf(c *cdc.Change, t cdc.Tuple, name string) (time.Time, error) {
	v, ok := col(c, t, name)
	if !ok || v.State != cdc.Present {
		return time.Time{}, fmt.Errorf("column %s is missing or null", name)
	}
	ts, ok := v.V.(time.Time)
	if !ok {
		if _, isText := v.V.(string); isText && isTimeColumn(c.Relation, name) {
			return time.Time{}, fmt.Errorf("column %s: %w", name, errNotRFC3339)
		}
		return time.Time{}, fmt.Errorf("column %s is not a timestamp", name)
	}
	if !representable(ts) {
		return time.Time{}, fmt.Errorf("column %s: %w", name, errNotRFC3339)
	}
	return ts, nil
}

// errNotRFC3339: a timestamp column holds a value RFC 3339 cannot show,
// which the stream keeps as PostgreSQL's text (infinity, BC, year 10000).
var errNotRFC3339 = errors.New("a time RFC 3339 cannot show")

// isTimeColumn reports whether the named column is of a timestamp type.
func isTimeColumn(rel *cdc.Relation, name string) bool {
	i, ok := rel.Index(name)
	return ok && isTimeOID(rel.Columns[i].BaseTypeOID)
}

// SLAEvent builds the event a timer fires: its id (from the SLA row, the
// kind and the target, so a second firing is the same event), its moment
// and its envelope.
func (m *Mapper) SLAEvent(t Timer) Event {
	id := m.source.NewTimedID("sla", t.SLAID, t.Kind, strconv.FormatInt(t.TargetAt.UnixMicro(), 10))
	o := beginObj(nil)
	o.key("requestId")
	o.b = appendString(o.b, m.cfg.Requests.IDPrefix, t.RequestID)
	o.str("slaType", t.SLAType)
	o.key("targetTime")
	o.b = appendTime(o.b, t.TargetAt)
	name := catalog.SLABreach
	if p, ok := warningPercent(t.Kind); ok {
		name = catalog.SLAWarning
		if t.FireAt.Sub(warningMoment(t, p)) > time.Second && t.TargetAt.After(t.StartedAt) {
			// Due later than its threshold (SLATimers): the share elapsed
			// when it was due, to a tenth of a percent.
			elapsed := float64(t.FireAt.Sub(t.StartedAt)) / float64(t.TargetAt.Sub(t.StartedAt)) * 100
			p = math.Round(elapsed*10) / 10
		}
		o.key("percentElapsed")
		o.b = strconv.AppendFloat(o.b, p, 'f', -1, 64)
		o.str("timeRemaining", TimeRemaining(t.TargetAt.Sub(t.FireAt)))
	} else {
		o.key("breachedAt")
		o.b = appendTime(o.b, t.FireAt) // the target, or the change that breached it (breachedHere)
	}
	body := envelope(nil, id, name, t.FireAt, o.end())
	return Event{ID: id, Type: name, Timestamp: t.FireAt, Body: body, Key: entityKey(m.cfg.Requests.IDPrefix, t.RequestID)}
}

// TimeRemaining formats a duration as DZDESK's documentation shows it
// ("2h 30m"): the largest non-zero unit among days, hours and minutes,
// followed by the next smaller unit when that is not zero, rounded down:
// "1d 4h", "1d" (for 1d 0h 30m), "2h 30m", "2h", "45m". Under a minute it
// is "<1m".
func TimeRemaining(d time.Duration) string {
	if d < time.Minute {
		return "<1m"
	}
	units := []struct {
		n    int64
		unit string
	}{
		{int64(d / (24 * time.Hour)), "d"},
		{int64(d % (24 * time.Hour) / time.Hour), "h"},
		{int64(d % time.Hour / time.Minute), "m"},
	}
	for i, u := range units {
		if u.n == 0 {
			continue
		}
		out := strconv.FormatInt(u.n, 10) + u.unit
		if i+1 < len(units) && units[i+1].n > 0 {
			out += " " + strconv.FormatInt(units[i+1].n, 10) + units[i+1].unit
		}
		return out
	}
	return "<1m"
}
