package cdc

import (
	"errors"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// RedactDSNError is a connection string's parse error without the
// string: pgx quotes it, password masked on a best-effort basis, and
// other parts (an unquoted password's second word, a host's name) may be
// secret too. What stays is the parameter at fault, from a fixed list
// (dsnFaults), or pgx's detail of a syntax error with its quoted text
// left out.
func RedactDSNError(err error) error {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return err
	}
	return errors.New("invalid connection string: " + dsnFault(pe))
}

// dsnFault says what is wrong with the string pe could not parse,
// quoting none of it.
func dsnFault(pe *pgconn.ParseConfigError) string {
	// pe.Error() is "cannot parse `<string>`: <message>[ (<inner>)]";
	// only the message and the inner error are pgx's own words. The
	// string comes first, so pgx's message is the last match: what a
	// string holds can only make an earlier one.
	text, inner := pe.Error(), ""
	if e := pe.Unwrap(); e != nil {
		inner = e.Error()
	}
	best, at := -1, -1
	for i, f := range dsnFaults {
		if j := strings.LastIndex(text, "`: "+f.message); j > at {
			best, at = i, j
		}
	}
	switch {
	case best < 0:
	case dsnFaults[best].say != "":
		return dsnFaults[best].say
	case inner != "":
		// A syntax error: pgx's detail, which may quote a word of the
		// string ("missing \"=\" after \"battery-S3cret\"", the part of
		// an unquoted password after a space), without its quoted text.
		return quotedInError.ReplaceAllString(inner, `"(not shown)"`)
	}
	return "not shown, as it may hold a password; check its syntax: host=… dbname=… or postgres://user@host:5432/db"
}

// dsnFaults are the messages of pgx's (pgconn's, pgx's, pgxpool's) parse
// errors that name a parameter, and what dzhook says instead: the
// parameter and the values it takes, never the value given. say is
// empty for a syntax error, whose detail is kept (dsnFault). An entry
// comes before the entries whose message starts its own.
var dsnFaults = []struct{ message, say string }{
	{"failed to parse as URL", ""},
	{"failed to parse as keyword/value", ""},
	{"invalid port", "invalid port: give a number from 1 to 65535"},
	{"could not match", "the ports do not match the hosts: give one port, or one for each host"},
	{"invalid connect_timeout", "invalid connect_timeout: give a whole number of seconds"},
	{"failed to configure TLS (sslmode is invalid)", "invalid sslmode: use disable, allow, prefer, require, verify-ca or verify-full"},
	{`failed to configure TLS (both "sslcert" and "sslkey" are required)`, "sslcert and sslkey go together: give both"},
	{"failed to configure TLS (unable to read CA file", "sslrootcert cannot be read"},
	{"failed to configure TLS (unable to add CA to cert pool)", "sslrootcert holds no PEM certificate"},
	{"failed to configure TLS", "its TLS settings (sslrootcert, sslcert, sslkey, sslpassword) cannot be used: check that each file is there and readable"},
	{"invalid sslcertmode", "invalid sslcertmode: use disable, allow or require"},
	{"unknown target_session_attrs value", "invalid target_session_attrs: use any, read-write, read-only, primary, standby or prefer-standby"},
	{"invalid min_protocol_version", "invalid min_protocol_version: use 3.0, 3.2 or latest"},
	{"invalid max_protocol_version", "invalid max_protocol_version: use 3.0, 3.2 or latest"},
	{"min_protocol_version cannot be greater", "min_protocol_version is greater than max_protocol_version"},
	{"unknown channel_binding value", "invalid channel_binding: use disable, prefer or require"},
	{"invalid require_auth", "invalid require_auth: a comma-separated list of password, md5, scram-sha-256, gss, sspi or none, each with ! to refuse it"},
	{"failed to read service", "the service (service, servicefile) cannot be read"},
	{"cannot parse statement_cache_capacity", "invalid statement_cache_capacity: give a whole number"},
	{"cannot parse description_cache_capacity", "invalid description_cache_capacity: give a whole number"},
	{"invalid default_query_exec_mode", "invalid default_query_exec_mode: use cache_statement, cache_describe, describe_exec, exec or simple_protocol"},
	{"cannot parse pool_max_conns", "invalid pool_max_conns: give a whole number"},
	{"pool_max_conns too small", "invalid pool_max_conns: give at least 1"},
	{"cannot parse pool_min_conns", "invalid pool_min_conns: give a whole number"},
	{"cannot parse pool_min_idle_conns", "invalid pool_min_idle_conns: give a whole number"},
	{"cannot parse pool_max_conn_lifetime_jitter", "invalid pool_max_conn_lifetime_jitter: give a duration, e.g. 1m"},
	{"cannot parse pool_max_conn_lifetime", "invalid pool_max_conn_lifetime: give a duration, e.g. 1h"},
	{"cannot parse pool_max_conn_idle_time", "invalid pool_max_conn_idle_time: give a duration, e.g. 30m"},
	{"cannot parse pool_health_check_period", "invalid pool_health_check_period: give a duration, e.g. 1m"},
	{"cannot parse pool_ping_timeout", "invalid pool_ping_timeout: give a duration, e.g. 5s"},
}

// quotedInError is text an error quotes.
var quotedInError = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
