package config

import (
	"strings"
	"testing"
)

// TestDSNParsed: validate parses source.dsn and journal.dsn as every
// connection does (a bad port, sslmode or connect_timeout passed it and
// failed only at run or setup), after the environment and ${NAME}
// references are laid over them, and names the parameter at fault
// without quoting the string: not its password, nor any other part.
func TestDSNParsed(t *testing.T) {
	const pw = "PLANTEDpw"
	for _, tc := range []struct {
		name string
		yaml string
		env  []string
		want string
	}{
		{"URL, bad port, from DZHOOK_SOURCE_DSN", minimal, []string{"DZHOOK_SOURCE_DSN=postgres://dz:" + pw + "@db:notaport/dzdesk"},
			"source.dsn: invalid connection string: invalid port"},
		{"not a connection string", minimal, []string{"DZHOOK_SOURCE_DSN=hello " + pw},
			"source.dsn: invalid connection string"},
		{"key=value, bad port", minimal, []string{"DZHOOK_SOURCE_DSN=host=db user=dz password=" + pw + " port=" + pw},
			"source.dsn: invalid connection string: invalid port"},
		{"key=value, bad sslmode", minimal, []string{"DZHOOK_SOURCE_DSN=host=db user=dz password=" + pw + " sslmode=" + pw},
			"source.dsn: invalid connection string: invalid sslmode"},
		{"URL, bad sslmode", minimal, []string{"DZHOOK_SOURCE_DSN=postgres://dz:" + pw + "@db/dzdesk?sslmode=bogus"},
			"source.dsn: invalid connection string: invalid sslmode"},
		{"URL, bad connect_timeout, through a reference", strings.Replace(minimal, "postgres://dzhook@127.0.0.1/dzdesk", "${DB_DSN}", 1),
			[]string{"DB_DSN=postgres://dz:" + pw + "@db/dzdesk?connect_timeout=" + pw},
			"source.dsn: invalid connection string: invalid connect_timeout"},
		{"key=value, bad connect_timeout, journal.dsn", minimal + "journal:\n  dsn: \"host=db password=" + pw + " connect_timeout=abc\"\n", nil,
			"journal.dsn: invalid connection string: invalid connect_timeout"},
		{"URL, bad port, journal.dsn from the environment", minimal, []string{"DZHOOK_JOURNAL_DSN=postgres://dz:" + pw + "@db:" + pw + "/j"},
			"journal.dsn: invalid connection string: invalid port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), tc.env)
			if err == nil {
				t.Fatal("Parse succeeded, want a problem")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("report lacks %q:\n%v", tc.want, err)
			}
			if strings.Contains(err.Error(), pw) || strings.Contains(err.Error(), "hello") || strings.Contains(err.Error(), "db:") {
				t.Errorf("report quotes the DSN:\n%v", err)
			}
		})
	}
	// The ones that connect still load, journal.dsn unset or not.
	// So do those naming files only the host dzhook runs on has (a CA, a
	// client key, a service file): validate may run elsewhere, and a CLI
	// reading the file need not read the key.
	for _, env := range [][]string{nil, {"DZHOOK_JOURNAL_DSN=host=127.0.0.1 dbname=journal sslmode=disable connect_timeout=5"},
		{"DZHOOK_SOURCE_DSN=postgres://dz@db/dzdesk?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"},
		{"DZHOOK_SOURCE_DSN=host=db user=dz sslmode=require sslcert=/nonexistent/c.pem sslkey=/nonexistent/k.pem"},
		{"DZHOOK_SOURCE_DSN=service=dzdesk", "PGSERVICEFILE=/nonexistent/pg_service.conf"}} {
		if _, err := Parse([]byte(minimal), env); err != nil {
			t.Errorf("%v: %v", env, err)
		}
	}
}
