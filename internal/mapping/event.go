package mapping

import (
	"time"

	"github.com/jackc/pglogrepl"
)

// Event is one webhook event, serialized once: Body is the envelope
// {"id","event","timestamp","data"} exactly as every attempt sends it.
type Event struct {
	// ID is "whk_" + 26 characters, derived from where the event came from
	// (see ids.Source.NewID), so a replay of the stream gives the same id.
	ID string
	// Type is the event name, e.g. "request.created".
	Type string
	// Timestamp is the commit time of the source transaction (SLA events:
	// the moment the threshold was crossed).
	Timestamp time.Time
	// Body is the serialized envelope.
	Body []byte
	// CommitLSN is the source transaction's commit LSN (0 for SLA events).
	CommitLSN pglogrepl.LSN
	// Key names the entity the event is about, for subscriptions that
	// deliver the events of one entity in order: the request id as the
	// payload shows it ("req_123") for request.* and sla.* events and for
	// request.commented, the user id ("usr_…") for user.* events, and the
	// key an outbox row or message carries for custom events. Empty means
	// unordered. It is not part of the body.
	Key string
}

// envelope serializes {"id","event","timestamp","data"} around data, in
// that order.
func envelope(buf []byte, id, event string, ts time.Time, data []byte) []byte {
	o := beginObj(buf)
	o.str("id", id)
	o.str("event", event)
	o.key("timestamp")
	o.b = appendTime(o.b, ts)
	o.raw("data", data)
	return o.end()
}
