package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/dzdesk/dzhook/internal/cdc"
	"github.com/dzdesk/dzhook/internal/mapping"
)

// TestReplacedMappingAfterANewSession: a change from before a reload's
// ALTER, sent again by a new replication session (after a journal write
// failure ended the last one) with the description it had, is mapped
// with the mapping the reload replaced, though the new mapping has
// fitted the table since: it comes before that in the WAL. A later
// change the new mapping does not fit still stalls
// (TestDropAfterAReloadStalls, in the engine, with PostgreSQL). Judged
// by arrival, the resent change stalled, for good.
func TestReplacedMappingAfterANewSession(t *testing.T) {
	p := newPipeline(t, &recorder{})
	cols := func(extra ...string) []cdc.Column {
		var out []cdc.Column
		for _, n := range append([]string{"id", "title", "status", "priority", "requester_id", "assigned_to_id", "updated_by_id"}, extra...) {
			out = append(out, cdc.Column{Name: n, TypeOID: 25})
		}
		for _, n := range []string{"created_at", "updated_at"} {
			out = append(out, cdc.Column{Name: n, TypeOID: 1184})
		}
		return out
	}
	change := func(rel *cdc.Relation, n uint64) *cdc.Change {
		return &cdc.Change{Op: cdc.OpInsert, Relation: rel, CommitLSN: pglogrepl.LSN(0x1000 + 0x100*n)}
	}
	ctx := context.Background()
	old := cdc.NewRelation(16400, "public", "requests", 'f', cols())
	if _, err := p.mapperFor(ctx, change(old, 1)); err != nil {
		t.Fatal(err)
	}
	replaced := p.Mapper()
	cfg := mapping.DefaultConfig()
	cfg.Requests.Columns.Title = "subject"
	p.SetMapper(p.Mapper().WithMapping(cfg, nil))
	altered := cdc.NewRelation(16400, "public", "requests", 'f', cols("subject")) // after the ALTER: the reload takes effect
	if _, err := p.mapperFor(ctx, change(altered, 3)); err != nil {
		t.Fatal(err)
	}
	// A new session: change 2, from before the ALTER, sent again.
	resent := cdc.NewRelation(16400, "public", "requests", 'f', cols())
	tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	m, err := p.mapperFor(tctx, change(resent, 2))
	if err != nil || m != replaced {
		t.Fatalf("a change from before the reload's ALTER, sent again by a new session: %v (the replaced mapping: %v), want mapped with the replaced mapping", err, m == replaced)
	}
	// After the ALTER in the WAL, the same description stalls.
	tctx2, cancel2 := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel2()
	if _, err := p.mapperFor(tctx2, change(resent, 4)); err == nil {
		t.Fatal("a change after the reload's ALTER that the new mapping does not fit was mapped")
	}
}

// requestColumns is the reference requests table's columns, and extra.
func requestColumns(extra ...string) []cdc.Column {
	var out []cdc.Column
	for _, n := range append([]string{"id", "title", "status", "priority", "requester_id", "assigned_to_id", "updated_by_id"}, extra...) {
		out = append(out, cdc.Column{Name: n, TypeOID: 25})
	}
	for _, n := range []string{"created_at", "updated_at"} {
		out = append(out, cdc.Column{Name: n, TypeOID: 1184})
	}
	return out
}

// TestFallbacksOnlyBeforeTheStartsCheck: a mapping recorded before this
// start maps a change the configured one does not fit only when it was
// committed before the start checked the configured mapping against the
// catalog. One after (a later ALTER: subject dropped again) stalls, even
// when no change of the table came in between; it was mapped silently
// with the recorded mapping.
func TestFallbacksOnlyBeforeTheStartsCheck(t *testing.T) {
	p := newPipeline(t, &recorder{})
	recorded := p.Mapper() // the reference mapping: title
	cfg := mapping.DefaultConfig()
	cfg.Requests.Columns.Title = "subject"
	p.schema.current.Store(p.Mapper().WithMapping(cfg, nil)) // started with it: the catalog has subject
	p.SetFallbacks([]*mapping.Mapper{recorded}, 0x5000)
	dropped := cdc.NewRelation(16400, "public", "requests", 'f', requestColumns())
	m, err := p.mapperFor(context.Background(), &cdc.Change{Op: cdc.OpInsert, Relation: dropped, CommitLSN: 0x4000})
	if err != nil || m != recorded {
		t.Fatalf("a change from before the start's check: %v (recorded: %v), want the recorded mapping", err, m == recorded)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	later := cdc.NewRelation(16400, "public", "requests", 'f', requestColumns())
	if m, err := p.mapperFor(ctx, &cdc.Change{Op: cdc.OpInsert, Relation: later, CommitLSN: 0x9000}); err == nil {
		t.Fatalf("a change after the start's check that the configured mapping does not fit was mapped (with the recorded mapping: %v), want a stall", m == recorded)
	}
}

// TestFallbackForATableRenamedWhileStopped: a change of the requests
// table from before a rename made while dzhook was stopped arrives under
// the old name, which the configured mapping does not map: the recorded
// mapping that maps that name maps it. It was taken for an unmapped
// table's change and dropped.
func TestFallbackForATableRenamedWhileStopped(t *testing.T) {
	p := newPipeline(t, &recorder{})
	old := mapping.DefaultConfig()
	old.Requests.Table = "tickets"
	recorded := p.Mapper().WithMapping(old, nil)
	p.SetFallbacks([]*mapping.Mapper{recorded}, 0x5000)
	before := cdc.NewRelation(16400, "public", "tickets", 'f', requestColumns())
	m, err := p.mapperFor(context.Background(), &cdc.Change{Op: cdc.OpInsert, Relation: before, CommitLSN: 0x1000})
	if err != nil || m != recorded {
		t.Fatalf("a change of the table from before its rename: %v (recorded: %v), want the recorded mapping", err, m == recorded)
	}
	// After the start's check, a table of that name is not the requests
	// table any more: unmapped, as the configured mapping says.
	other := cdc.NewRelation(16401, "public", "tickets", 'f', requestColumns())
	if m, err := p.mapperFor(context.Background(), &cdc.Change{Op: cdc.OpInsert, Relation: other, CommitLSN: 0x9000}); err != nil || m == recorded {
		t.Fatalf("a change after the start's check: %v (recorded: %v), want the configured mapping", err, m == recorded)
	}
}

// TestReplacedMappingOnlyBeforeTheReloadsCheck: the mapping a reload
// replaced maps a change the new one does not fit only when it was
// committed before the reload was checked against the catalog: a later
// ALTER on a table with no change since the reload stalls.
func TestReplacedMappingOnlyBeforeTheReloadsCheck(t *testing.T) {
	p := newPipeline(t, &recorder{})
	users := cdc.NewRelation(16300, "public", "users", 'f', []cdc.Column{{Name: "id", TypeOID: 25}, {Name: "email", TypeOID: 25}, {Name: "name", TypeOID: 25}, {Name: "role", TypeOID: 25}, {Name: "active", TypeOID: 16}, {Name: "created_at", TypeOID: 1184}, {Name: "updated_at", TypeOID: 1184}})
	cfg := mapping.DefaultConfig()
	cfg.Requests.Columns.Title = "subject"
	p.SetMapperAt(p.Mapper().WithMapping(cfg, nil), 0x5000)
	if _, err := p.mapperFor(context.Background(), &cdc.Change{Op: cdc.OpInsert, Relation: users, CommitLSN: 0x6000}); err != nil {
		t.Fatal(err) // the reload takes effect at the users' change
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	dropped := cdc.NewRelation(16400, "public", "requests", 'f', requestColumns())
	if _, err := p.mapperFor(ctx, &cdc.Change{Op: cdc.OpInsert, Relation: dropped, CommitLSN: 0x9000}); err == nil {
		t.Fatal("a change after the reload's check that the new mapping does not fit was mapped with the replaced one, want a stall")
	}
}
