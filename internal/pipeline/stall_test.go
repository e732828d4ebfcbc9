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
