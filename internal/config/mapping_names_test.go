package config

import (
	"strings"
	"testing"
)

// TestMappingColumnNames: a column name as PostgreSQL stores it is taken
// from the YAML (état, "Ticket No"), and one PostgreSQL would truncate is
// refused at its path, naming the limit.
func TestMappingColumnNames(t *testing.T) {
	cfg, err := Parse([]byte(minimal+`
mapping:
  requests:
    table: tickets
    columns: {id: "Ticket No", status: état}
`), nil)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c := cfg.Mapping.Requests.Columns; c.ID != "Ticket No" || c.Status != "état" {
		t.Errorf("columns %q, %q", c.ID, c.Status)
	}
	long := strings.Repeat("x", 64)
	_, err = Parse([]byte(minimal+`
mapping:
  requests:
    columns: {status: `+long+`}
`), nil)
	if want := `mapping.requests.columns.status: "` + long + `" is 64 bytes long: PostgreSQL keeps at most 63`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Parse: %v; want %s", err, want)
	}
}
