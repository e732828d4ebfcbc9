package mapping

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/pgtest"
	"github.com/dzdesk/dzhook/internal/testutil"
)

// logLines collects a logger's JSON lines.
type logLines struct{ testutil.SyncBuffer }

// find returns the lines at level whose attributes include every pair of
// want.
func (l *logLines) find(level string, want map[string]string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(l.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["level"] != level {
			continue
		}
		ok := true
		for k, v := range want {
			ok = ok && fmt.Sprint(m[k]) == v
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

// requestsRelation is the reference requests table as the stream
// describes it, its time columns of type timestamptz.
func requestsRelation() *cdc.Relation {
	var cols []cdc.Column
	for _, n := range []string{"id", "title", "status", "priority", "requester_id", "assigned_to_id", "updated_by_id", "created_at", "updated_at"} {
		oid := uint32(pgtype.TextOID)
		switch n {
		case "id", "requester_id", "assigned_to_id", "updated_by_id":
			oid = pgtype.Int8OID
		case "created_at", "updated_at":
			oid = pgtype.TimestamptzOID
		}
		cols = append(cols, cdc.Column{Name: n, TypeOID: oid})
	}
	return cdc.NewRelation(1, "public", "requests", 'f', cols)
}

// TestTimestampsNotRFC3339 is the conversion's table test: a time column
// whose value RFC 3339 cannot show (the stream keeps those as
// PostgreSQL's text) is null in the payload, with a warning naming the
// table, the row's id and the column; times it can show are unchanged.
// The payloads are pinned in testdata/timestamps.golden.
func TestTimestampsNotRFC3339(t *testing.T) {
	var logs logLines
	m := NewMapper(MapperConfig{Mapping: DefaultConfig(), Source: ids.NewSource("1"), Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	rel := requestsRelation()
	cases := []struct {
		name string
		v    any // as the stream decodes it
		warn bool
	}{
		{"infinity", "infinity", true},
		{"-infinity", "-infinity", true},
		{"year 10000", "10000-01-01 00:00:00+00", true},
		{"BC", "0044-03-15 12:00:00+00 BC", true},
		{"year 1 as a time", time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), false},
		{"ordinary", time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC), false},
	}
	var golden strings.Builder
	for i, tc := range cases {
		id := int64(100 + i)
		row := cdc.Tuple{{V: id}, {V: "t"}, {V: "open"}, {V: "high"}, {V: int64(1)}, {State: cdc.Null}, {State: cdc.Null}, {V: tc.v}, {State: cdc.Null}}
		evs, _ := m.Map(context.Background(), &cdc.Change{Op: cdc.OpInsert, Relation: rel, New: row, CommitLSN: 1, CommitTime: time.Unix(0, 0)}, nil)
		if len(evs) != 1 {
			t.Fatalf("%s: %d events, want 1", tc.name, len(evs))
		}
		var env struct {
			Data map[string]json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(evs[0].Body, &env); err != nil {
			t.Fatalf("%s: %v: %s", tc.name, err, evs[0].Body)
		}
		if got := string(env.Data["updatedAt"]); got != "null" {
			t.Errorf("%s: NULL updatedAt is %s, want null", tc.name, got)
		}
		got := string(env.Data["createdAt"])
		fmt.Fprintf(&golden, "%-18s createdAt=%s\n", tc.name, got)
		warned := len(logs.find("WARN", map[string]string{"table": "public.requests", "id": fmt.Sprint(id), "column": "created_at"})) == 1
		switch {
		case tc.warn && got != "null":
			t.Errorf("%s: createdAt is %s, want null", tc.name, got)
		case tc.warn && !warned:
			t.Errorf("%s: no warning naming table, id %d and column", tc.name, id)
		case !tc.warn && (got == "null" || warned):
			t.Errorf("%s: createdAt is %s (warned: %v), want the time, no warning", tc.name, got, warned)
		}
	}
	path := filepath.Join("testdata", "timestamps.golden")
	if *update {
		if err := os.WriteFile(path, []byte(golden.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if golden.String() != string(want) {
		t.Errorf("payload times differ from %s:\n got:\n%s\nwant:\n%s", path, golden.String(), want)
	}
}

// slaRelation is the reference schema's SLA table as the stream
// describes it (REPLICA IDENTITY FULL).
func slaRelation() *cdc.Relation {
	var cols []cdc.Column
	for _, n := range []string{"id", "request_id", "sla_type", "started_at", "target_at", "completed_at"} {
		oid := uint32(pgtype.TimestamptzOID)
		switch n {
		case "id", "request_id":
			oid = pgtype.Int8OID
		case "sla_type":
			oid = pgtype.TextOID
		}
		cols = append(cols, cdc.Column{Name: n, TypeOID: oid})
	}
	return cdc.NewRelation(2, "public", "request_slas", 'f', cols)
}

// TestSLATimesNotRFC3339: an SLA whose target RFC 3339 cannot show arms
// nothing and cancels what it had armed; one whose start it cannot show
// arms the breach alone. Both warn; neither is an error.
func TestSLATimesNotRFC3339(t *testing.T) {
	var logs logLines
	m := NewMapper(MapperConfig{Mapping: DefaultConfig(), Source: ids.NewSource("1"), Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	rel := slaRelation()
	now := time.Date(2024, 1, 15, 12, 0, 0, 0, time.UTC)
	target := now.Add(time.Hour)
	change := func(started, target any) *cdc.Change {
		return &cdc.Change{Op: cdc.OpInsert, Relation: rel, CommitLSN: 1,
			New: cdc.Tuple{{V: int64(7)}, {V: int64(1)}, {V: "response"}, {V: started}, {V: target}, {State: cdc.Null}}}
	}
	for _, bad := range []any{"infinity", "-infinity", "10000-01-01 00:00:00+00", "0044-03-15 12:00:00+00 BC"} {
		up, err := m.SLAChange(change(now, bad), []float64{75}, now)
		if err != nil || up.SLAID != "7" || len(up.Arm) != 0 || !up.Keep.IsZero() {
			t.Errorf("target %v: %+v, %v; want every timer of SLA 7 cancelled, no error", bad, up, err)
		}
		up, err = m.SLAChange(change(bad, target), []float64{75}, now)
		if err != nil || len(up.Arm) != 1 || up.Arm[0].Kind != "breach" || !up.Arm[0].FireAt.Equal(target) {
			t.Errorf("start %v: %+v, %v; want the breach alone", bad, up, err)
		}
	}
	for _, col := range []string{"target_at", "started_at"} {
		if n := len(logs.find("WARN", map[string]string{"table": "public.request_slas", "id": "7", "column": col})); n != 4 {
			t.Errorf("%d warnings naming SLA 7's %s, want 4", n, col)
		}
	}
}

// TestTimestampsNotRFC3339ThroughStream: real rows with times RFC 3339
// cannot show, in a NOT NULL time column (created_at) and a nullable one
// (updated_at), reach the payloads as null, through the real stream.
func TestTimestampsNotRFC3339ThroughStream(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema, `ALTER TABLE requests ALTER COLUMN updated_at DROP NOT NULL`,
		`INSERT INTO users (id, email) VALUES (1, 'john@company.com')`)
	p := startPipeline(t, db, DefaultConfig())
	values := []string{"infinity", "-infinity", "10000-01-01 00:00:00+00", "0044-03-15 12:00:00+00 BC", "2024-01-15 14:30:00+00"}
	for i, v := range values {
		db.Exec(t, fmt.Sprintf(`INSERT INTO requests (id, title, requester_id, created_at, updated_at) VALUES (%d, 't', 1, '%s', '%s')`, 10+i, v, v))
	}
	db.Exec(t, `INSERT INTO requests (id, title, requester_id, created_at, updated_at) VALUES (20, 't', 1, 'infinity', NULL)`)
	evs, _ := p.wait(t, len(values)+1, 0)
	for i, ev := range evs {
		var env struct {
			Data map[string]json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(ev.Body, &env); err != nil {
			t.Fatal(err)
		}
		want := "null"
		if i == len(values)-1 {
			want = `"2024-01-15T14:30:00Z"`
		}
		for _, field := range []string{"createdAt", "updatedAt"} {
			got, ok := env.Data[field]
			if !ok {
				t.Errorf("%s: no %s: %s", env.Data["id"], field, ev.Body)
			} else if string(got) != want {
				t.Errorf("%s: %s is %s, want %s", env.Data["id"], field, got, want)
			}
		}
	}
}

// TestSLAExtendedAfterItsWarning: a change of an SLA (its old row in the
// stream, REPLICA IDENTITY FULL) that extends a target whose 75%
// threshold had passed arms no 75% warning for the new target: it was
// due at the old target already, and due again now (under the new
// target's id) it warned twice; armed at its own moment, a moment ago,
// the clock did not find it late yet. A target moved closer past the
// threshold still makes it due at the change, unless the old target had
// passed it too. A later change that keeps the extended target arms it
// no more than the extension did.
func TestSLAExtendedAfterItsWarning(t *testing.T) {
	m := NewMapper(MapperConfig{Mapping: DefaultConfig(), Source: ids.NewSource("1")})
	rel := slaRelation()
	start := time.Date(2024, 1, 15, 8, 0, 0, 0, time.UTC)
	row := func(target time.Time) cdc.Tuple {
		return cdc.Tuple{{V: int64(7)}, {V: int64(1)}, {V: "resolution"}, {V: start}, {V: target}, {State: cdc.Null}}
	}
	for _, tc := range []struct {
		name             string
		commit, old, new time.Time
		due              time.Time // the 75% warning's; zero: none armed
	}{
		{"extended right after the warning", start.Add(7*time.Hour + 31*time.Minute), start.Add(10 * time.Hour), start.Add(10*time.Hour + time.Minute), time.Time{}},
		{"extended long after the warning", start.Add(8 * time.Hour), start.Add(10 * time.Hour), start.Add(10*time.Hour + 5*time.Minute), time.Time{}},
		{"extended before the threshold", start.Add(7 * time.Hour), start.Add(10 * time.Hour), start.Add(12 * time.Hour), start.Add(9 * time.Hour)},
		{"moved closer past the threshold", start.Add(8*time.Hour + 20*time.Minute), start.Add(12 * time.Hour), start.Add(10 * time.Hour), start.Add(8*time.Hour + 20*time.Minute)},
		{"moved closer before the old target's threshold", start.Add(7 * time.Hour), start.Add(10 * time.Hour), start.Add(9 * time.Hour), start.Add(7 * time.Hour)},
		{"moved closer after the old target's threshold", start.Add(8 * time.Hour), start.Add(10 * time.Hour), start.Add(9 * time.Hour), time.Time{}},
		// A later change that keeps the extended target: nothing armed the
		// passed warning for it, and this change does not either.
		{"touched after an extension, past the threshold", start.Add(7*time.Hour + 31*time.Minute + 30*time.Second), start.Add(10*time.Hour + time.Minute), start.Add(10*time.Hour + time.Minute), time.Time{}},
		{"touched before the threshold", start.Add(7 * time.Hour), start.Add(10 * time.Hour), start.Add(10 * time.Hour), start.Add(450 * time.Minute)},
	} {
		c := &cdc.Change{Op: cdc.OpUpdate, Relation: rel, CommitLSN: 1, CommitTime: tc.commit, Old: row(tc.old), New: row(tc.new)}
		up, err := m.SLAChange(c, []float64{75}, tc.commit)
		var kinds []string
		for _, a := range up.Arm {
			kinds = append(kinds, a.Kind)
		}
		switch {
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.due.IsZero() && !slices.Equal(kinds, []string{"breach"}):
			t.Errorf("%s: %+v; want the breach alone", tc.name, up.Arm)
		case !tc.due.IsZero() && (len(up.Arm) != 2 || up.Arm[0].Kind != "warning:75" || !up.Arm[0].FireAt.Equal(tc.due)):
			t.Errorf("%s: %+v; want warning:75 due at %s", tc.name, up.Arm, tc.due.Format(time.TimeOnly))
		}
	}
}
