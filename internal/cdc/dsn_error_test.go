package cdc

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
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

// TestRedactDSNErrorNamesTheParameter: the error names the parameter at
// fault (it said only `strconv.ParseInt: parsing "(not shown)"` of a bad
// connect_timeout, and nothing of a bad port), in a URL and in a
// key=value string, and quotes neither the password nor the value given
// nor any other part of the string (its host, user and database are
// planted with the password's marker).
func TestRedactDSNErrorNamesTheParameter(t *testing.T) {
	const pw = "PLANTEDpw"
	for _, tc := range []struct{ dsn, want string }{
		{"postgres://dz" + pw + ":" + pw + "@db" + pw + ":notaport/dz" + pw, "invalid port"},
		{"host=db" + pw + " user=dz password=" + pw + " port=" + pw, "invalid port"},
		{"postgres://dz:" + pw + "@db" + pw + "/dz?sslmode=" + pw, "invalid sslmode"},
		{"host=db" + pw + " password=" + pw + " sslmode=" + pw, "invalid sslmode"},
		{"postgres://dz:" + pw + "@db" + pw + "/dz?connect_timeout=" + pw, "invalid connect_timeout"},
		{"host=db" + pw + " password=" + pw + " connect_timeout=" + pw, "invalid connect_timeout"},
		{"host=db" + pw + " password='horse " + pw + "' connect_timeout=-1", "invalid connect_timeout"},
		{"postgres://dz:" + pw + "@db/dz?target_session_attrs=" + pw, "invalid target_session_attrs"},
		{"host=db password=" + pw + " channel_binding=" + pw, "invalid channel_binding"},
		{"host=db password=" + pw + " min_protocol_version=" + pw, "invalid min_protocol_version"},
		{"host=db password=" + pw + " require_auth=" + pw, "invalid require_auth"},
		{"host=db password=" + pw + " sslcertmode=" + pw, "invalid sslcertmode"},
		{"host=db password=" + pw + " sslmode=verify-full sslrootcert=/nonexistent/" + pw, "sslrootcert cannot be read"},
		{"postgres://dz:" + pw + "@db/dz?pool_max_conns=" + pw, "invalid pool_max_conns"},
		{"postgres://dz:" + pw + "@db/dz?pool_max_conn_lifetime_jitter=" + pw, "invalid pool_max_conn_lifetime_jitter"},
		{"host=db password=" + pw + " default_query_exec_mode=" + pw, "invalid default_query_exec_mode"},
		{"postgres://dz:" + pw + "%zz@db/dz", "invalid percent-encoded token"},
		{"hello " + pw, "invalid connection string: invalid keyword/value"},
		// A string that spells pgx's words leads to no other part of it.
		{"host=db password=" + pw + " application_name='`: invalid port " + pw + "' connect_timeout=x", "invalid"},
	} {
		_, err := pgxpool.ParseConfig(tc.dsn)
		if err == nil {
			t.Errorf("%q parsed", tc.dsn)
			continue
		}
		msg := RedactDSNError(err).Error()
		if !strings.Contains(msg, tc.want) {
			t.Errorf("%q: %s\nwant it to say %q", tc.dsn, msg, tc.want)
		}
		if strings.Contains(msg, pw) || strings.Contains(msg, "horse") {
			t.Errorf("%q: the error quotes the string: %s", tc.dsn, msg)
		}
	}
}
