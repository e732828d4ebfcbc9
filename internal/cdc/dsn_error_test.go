package cdc

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// A connection string's parse error quotes nothing of it: the word after
// a space in an unquoted password was quoted ("missing \"=\" after
// \"battery-S3cret\"").
func TestRedactDSNErrorQuotesNothing(t *testing.T) {
	_, err := pgconn.ParseConfig("host=127.0.0.1 user=dzhook password=horse battery-S3cret dbname=dzdesk")
	if err == nil {
		t.Fatal("the DSN parsed")
	}
	if msg := RedactDSNError(err).Error(); strings.Contains(msg, "S3cret") || strings.Contains(msg, "horse") || !strings.Contains(msg, "invalid connection string") {
		t.Errorf("RedactDSNError: %s", msg)
	}
}
