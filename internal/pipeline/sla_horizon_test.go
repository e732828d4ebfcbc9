package pipeline

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/cdc"
)

// TestSLAWarningDueAtItsMoveAfterTheHorizon: an SLA whose target moves
// closer past a warning's threshold is warned of at the move, however
// long ago the threshold's share of the new span passed (its horizon is
// judged by when it is due); an update that keeps the target arms no
// warning whose threshold passed, which was sent then (or missed while
// dzhook was down) and whose row retention may have pruned.
func TestSLAWarningDueAtItsMoveAfterTheHorizon(t *testing.T) {
	day := 24 * time.Hour
	names := []string{"id", "request_id", "sla_type", "started_at", "target_at", "completed_at"}
	cols := make([]cdc.Column, len(names))
	for i, n := range names {
		cols[i] = cdc.Column{Name: n, TypeOID: 25}
		if strings.HasSuffix(n, "_at") {
			cols[i].TypeOID = 1184
		}
	}
	rel := cdc.NewRelation(9, "public", "request_slas", 'f', cols)
	now := time.Now()
	v := func(x any) cdc.Value { return cdc.Value{V: x} }
	row := func(target time.Time) cdc.Tuple {
		return cdc.Tuple{v(int64(7)), v(int64(1)), v("resolution"), v(now.Add(-10 * day)), v(target), {State: cdc.Null}}
	}
	for _, tc := range []struct {
		name      string
		oldTarget time.Time
		want      int
	}{
		{"escalated: 5 days left moved to 12 hours", now.Add(5 * day), 2},
		{"touched: the target kept", now.Add(12 * time.Hour), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{}
			p := newPipeline(t, r)
			p.cfg.ArmHorizon = day
			c := &cdc.Change{Op: cdc.OpUpdate, Relation: rel, CommitLSN: 0x100, CommitTime: now, Old: row(tc.oldTarget), New: row(now.Add(12 * time.Hour))}
			if err := p.HandleChange(context.Background(), c); err != nil {
				t.Fatal(err)
			}
			var kinds []string
			for _, a := range r.timers[0].Arm {
				kinds = append(kinds, a.Kind+"@"+a.FireAt.Sub(now).Round(time.Second).String())
			}
			if len(kinds) != tc.want {
				t.Errorf("armed %v, want %d timers", kinds, tc.want)
			}
		})
	}
}
