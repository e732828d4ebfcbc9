package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dzdesk/dzhook/internal/config"
)

// TestTransient: the start-up errors dzhook waits out (the database not
// reachable yet, starting up, full) are told from those the operator must
// fix (bad role or database, bad password, a wrong setting) by their
// type, as Setup returns them from a real server.
func TestTransient(t *testing.T) {
	db := newDB(t)
	closed := refusedAddr(t)
	setupErr := func(t *testing.T, dsn string) error {
		t.Helper()
		yaml := "source:\n  dsn: " + dsn + "\nadmin:\n  listen: \"\"\nsubscriptions:\n" + sub("crm", "https://crm.example.com/hook", "request.created")
		cfg, err := config.Parse([]byte(yaml), os.Environ())
		if err != nil {
			t.Fatal(err)
		}
		_, err = Setup(context.Background(), cfg, SetupOptions{CheckOnly: true})
		if err == nil {
			t.Fatalf("Setup with %s succeeded, want an error", dsn)
		}
		return err
	}
	for _, tc := range []struct {
		name string
		err  func(t *testing.T) error
		want bool
	}{
		{"connection refused", func(t *testing.T) error {
			return setupErr(t, fmt.Sprintf("postgres://postgres@%s/x?sslmode=disable", closed))
		}, true},
		{"no such role", func(t *testing.T) error {
			return setupErr(t, strings.Replace(db.DSN, "postgres@", "nosuchrole@", 1))
		}, false},
		{"no such database", func(t *testing.T) error {
			return setupErr(t, strings.Replace(db.DSN, db.Name, "nosuchdb", 1))
		}, false},
		{"starting up (57P03)", func(*testing.T) error {
			return fmt.Errorf("connect to source: %w", &pgconn.PgError{Severity: "FATAL", Code: "57P03", Message: "the database system is starting up"})
		}, true},
		{"too many connections (53300)", func(*testing.T) error {
			return fmt.Errorf("connect to source: %w", &pgconn.PgError{Severity: "FATAL", Code: "53300", Message: "sorry, too many clients already"})
		}, true},
		{"bad password (28P01)", func(*testing.T) error {
			return fmt.Errorf("connect to source: %w", &pgconn.PgError{Severity: "FATAL", Code: "28P01", Message: `password authentication failed for user "dzhook"`})
		}, false},
		{"text that merely mentions a refused connection", func(*testing.T) error {
			return errors.New("mapping check: column \"connection refused\" is missing; the database system is starting up")
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.err(t)
			if got := Transient(err); got != tc.want {
				t.Errorf("Transient(%v) = %v, want %v", err, got, tc.want)
			}
		})
	}
}

// refusedAddr is a local address nothing listens on any more: a
// connection to it is refused.
func refusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
