package engine

import (
	"errors"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dzdesk/dzhook/internal/cdc"
)

// SQLSTATE codes of a server that may accept connections soon.
const (
	cannotConnectNow   = "57P03" // the database system is starting up
	tooManyConnections = "53300"
)

// Transient reports whether a start-up error may go away by itself: the
// database is not reachable yet (no route, refused, timed out: a sidecar
// often starts before its PostgreSQL), is starting up (SQLSTATE 57P03) or
// has no connection free (53300), or is a standby (cdc.StandbyError: a
// failover in progress, source.dsn not yet moved). Bad credentials, a missing database,
// table or column, or a wrong setting are not. The error's types decide,
// never its text: pgconn keeps the server's *PgError and the dialer's
// *net.OpError in the chain of its ConnectError.
func Transient(err error) bool {
	if _, ok := errors.AsType[*cdc.StandbyError](err); ok {
		return true // a failover in progress: the primary comes back
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == cannotConnectNow || pgErr.Code == tooManyConnections
	}
	var netErr net.Error // *net.OpError (refused, unreachable), *net.DNSError, timeouts
	return errors.As(err, &netErr) || errors.Is(err, syscall.ECONNREFUSED)
}
