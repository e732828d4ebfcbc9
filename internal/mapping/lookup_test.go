package mapping

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dzdesk/dzhook/internal/ids"
	"github.com/dzdesk/dzhook/internal/testutil"
)

type failingLookup struct{ calls atomic.Int64 }

func (f *failingLookup) LookupEmails(context.Context, []string) (map[string]string, error) {
	f.calls.Add(1)
	return nil, errors.New("permission denied for table users")
}

// A failing user lookup (SELECT revoked on users) is said once, with the
// count, not a WARN per event, and not tried for every event (a lookup
// that hangs held the stream its timeout each time); the events go out
// with null emails.
func TestFailingLookupSaidOnce(t *testing.T) {
	var logs testutil.SyncBuffer
	lookup := &failingLookup{}
	m := NewMapper(MapperConfig{Mapping: DefaultConfig(), Source: ids.NewSource("7311234567890123456"), Users: lookup,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	c := requestUpdate()
	ctx := context.Background()
	for range 200 {
		out, _ := m.Map(ctx, c, nil)
		if len(out) != 3 || !strings.Contains(string(out[0].Body), `"requester":{"id":"usr_123","email":null}`) {
			t.Fatalf("events %d, the first %s", len(out), out[0].Body)
		}
	}
	if n := strings.Count(logs.String(), "lookup failed"); n != 1 {
		t.Errorf("%d WARN lines for 200 changes, want 1", n)
	}
	if n := lookup.calls.Load(); n != 1 {
		t.Errorf("%d lookups in the pause after a failure, want 1", n)
	}
}
