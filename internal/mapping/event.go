package mapping

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"hash/fnv"
	"time"

	"github.com/jackc/pglogrepl"
)

// Event is one webhook event, serialized once: Body is the envelope
// {"id","event","timestamp","data"} exactly as every attempt sends it.
type Event struct {
	// ID is "whk_" + 26 characters, derived from where the event came from
	// (see NewID), so a replay of the stream gives the same id.
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
}

// idEncoding is base32 with its digits in ASCII order, so ids of one
// database sort as their positions in the stream do (the journal's indexes
// stay append-mostly).
var idEncoding = base32.NewEncoding("234567abcdefghijklmnopqrstuvwxyz").WithPadding(base32.NoPadding)

// Source identifies a database: events of two databases never share ids.
type Source uint32

// NewSource derives a Source from the database's system identifier
// (IDENTIFY_SYSTEM's systemid, or pg_control_system()).
func NewSource(systemID string) Source {
	h := fnv.New32a()
	h.Write([]byte(systemID))
	return Source(h.Sum32())
}

// NewID returns the id of the index-th event fired by the change at
// ordinal in the transaction committed at lsn. It is the position itself,
// encoded (3 bytes of the source, 8 of LSN, 4 of ordinal, 1 of index):
// stable across replays, unique within a database, and free of hashing on
// the hot path. Four bytes of ordinal cover any transaction PostgreSQL can
// commit (a bulk UPDATE of 20 million rows must not wrap into ids already
// used); the index counts the events of one change, a handful; the source
// only has to tell apart the few databases that could share a journal.
func (s Source) NewID(lsn pglogrepl.LSN, ordinal, index int) string {
	var b [16]byte
	b[0], b[1], b[2] = byte(s>>16), byte(s>>8), byte(s)
	binary.BigEndian.PutUint64(b[3:], uint64(lsn))
	binary.BigEndian.PutUint32(b[11:], uint32(ordinal))
	b[15] = byte(index)
	var out [4 + 26]byte
	copy(out[:], "whk_")
	idEncoding.Encode(out[4:], b[:])
	return string(out[:])
}

// NewTimedID returns the id of an event that comes from time rather than
// from a change (the SLA clock): a hash of the source and the parts that
// make it unique, e.g. the SLA row, the kind and the target time.
func (s Source) NewTimedID(parts ...string) string {
	h := sha256.New()
	var src [4]byte
	binary.BigEndian.PutUint32(src[:], uint32(s))
	h.Write(src[:])
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	sum := h.Sum(nil)
	return "whk_" + idEncoding.EncodeToString(sum[:16])
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
