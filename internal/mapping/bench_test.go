package mapping

import (
	"context"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/ids"
)

// requestUpdate is a change of the reference requests table that fires
// request.updated, request.status_changed and request.assigned.
func requestUpdate() *cdc.Change {
	names := []string{"id", "title", "description", "status", "priority", "requester_id", "assigned_to_id", "updated_by_id", "created_at", "updated_at"}
	cols := make([]cdc.Column, len(names))
	for i, n := range names {
		cols[i] = cdc.Column{Name: n}
	}
	rel := cdc.NewRelation(1, "public", "requests", 'f', cols)
	created := time.Date(2024, 1, 15, 14, 30, 0, 0, time.UTC)
	v := func(x any) cdc.Value { return cdc.Value{V: x} }
	old := cdc.Tuple{v(int64(123)), v("Cannot access email"), v("Outlook says password expired"), v("open"), v("high"), v(int64(123)), {State: cdc.Null}, {State: cdc.Null}, v(created), v(created)}
	neu := cdc.Tuple{v(int64(123)), v("Cannot access email"), v("Outlook says password expired"), v("in_progress"), v("high"), v(int64(123)), v(int64(456)), v(int64(456)), v(created), v(created.Add(5 * time.Minute))}
	return &cdc.Change{Op: cdc.OpUpdate, Relation: rel, Old: old, New: neu, CommitLSN: 0x16B3748, CommitTime: created.Add(5 * time.Minute), Ordinal: 0}
}

// BenchmarkMapRequestUpdate maps and serializes one request update that
// fires three events; the email cache is warm, as it is in steady state.
func BenchmarkMapRequestUpdate(b *testing.B) {
	m := NewMapper(MapperConfig{Mapping: DefaultConfig(), Source: ids.NewSource("7311234567890123456")})
	m.people.put("123", "john@company.com", true)
	m.people.put("456", "jane@company.com", true)
	c := requestUpdate()
	ctx := context.Background()
	var out []Event
	b.ReportAllocs()
	for b.Loop() {
		out, _ = m.Map(ctx, c, out[:0])
		if len(out) != 3 {
			b.Fatalf("got %d events, want 3", len(out))
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "changes/s")
}

// BenchmarkMapRequestInsert maps the catch-up workload's change: a request
// insert that fires request.created.
func BenchmarkMapRequestInsert(b *testing.B) {
	m := NewMapper(MapperConfig{Mapping: DefaultConfig(), Source: ids.NewSource("7311234567890123456")})
	m.people.put("123", "john@company.com", true)
	m.people.put("456", "jane@company.com", true)
	c := requestUpdate()
	c.Op, c.Old = cdc.OpInsert, nil
	ctx := context.Background()
	var out []Event
	b.ReportAllocs()
	for b.Loop() {
		out, _ = m.Map(ctx, c, out[:0])
		if len(out) != 1 {
			b.Fatalf("got %d events, want 1", len(out))
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "changes/s")
}
