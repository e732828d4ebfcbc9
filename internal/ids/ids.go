// Package ids holds the formats of dzhook's identifiers in one place: event
// ids ("whk_…"), delivery ids ("dlv_…"), test event ids ("whk_test_…") and
// the key range that holds the deliveries of an event, and replay ids
// ("rpl_…") with the ids of the deliveries replays make.
//
// The formats are load-bearing beyond Go: the journal stores ids in
// COLLATE "C" columns and its retention SQL finds the deliveries of an event
// by the range DeliveryRange returns, so a change here is a change of the
// journal's data. The tests in this package pin every format.
//
// Ids are derived, not drawn: an event's id is its position in the stream
// (or, for events that come from time, a hash of what makes them unique),
// and a delivery's id is its event's plus a tag of its subscription, so a
// replay of the stream finds the events and deliveries it made before.
package ids

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"hash/fnv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
)

// Prefixes of the ids.
const (
	// EventPrefix starts every event id.
	EventPrefix = "whk_"
	// DeliveryPrefix starts every delivery id.
	DeliveryPrefix = "dlv_"
	// TestEventPrefix starts the ids of test events (dzhook test, the
	// admin API's test endpoint); they are not positions in the stream.
	TestEventPrefix = "whk_test_"
)

// TagLen is the length of a subscription's tag, the end of its delivery ids.
const TagLen = 13

// encoding is base32 with its digits in ASCII order, so ids of one
// database sort as their positions in the stream do (the journal's indexes
// stay append-mostly). Every digit sorts before '~', which DeliveryRange
// relies on.
var encoding = base32.NewEncoding("234567abcdefghijklmnopqrstuvwxyz").WithPadding(base32.NoPadding)

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
// ordinal in the transaction committed at lsn: "whk_" + 26 characters. It
// is the position itself, encoded (3 bytes of the source, 8 of LSN, 4 of
// ordinal, 1 of index): stable across replays, unique within a database,
// sorted as positions are, and free of hashing on the hot path. Four bytes
// of ordinal cover any transaction PostgreSQL can commit (a bulk UPDATE of
// 20 million rows must not wrap into ids already used); the index counts
// the events of one change, a handful; the source only has to tell apart
// the few databases that could share a journal.
func (s Source) NewID(lsn pglogrepl.LSN, ordinal, index int) string {
	var b [16]byte
	b[0], b[1], b[2] = byte(s>>16), byte(s>>8), byte(s)
	binary.BigEndian.PutUint64(b[3:], uint64(lsn))
	binary.BigEndian.PutUint32(b[11:], uint32(ordinal))
	b[15] = byte(index)
	var out [len(EventPrefix) + 26]byte
	copy(out[:], EventPrefix)
	encoding.Encode(out[len(EventPrefix):], b[:])
	return string(out[:])
}

// NewTimedID returns the id of an event that comes from time rather than
// from a change (the SLA clock): "whk_" + 26 characters of a hash of the
// source and the parts that make it unique, e.g. the SLA row, the kind and
// the target time.
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
	return EventPrefix + encoding.EncodeToString(sum[:16])
}

// TestEventID returns a fresh id for a test event: "whk_test_" + 24 hex
// characters of randomness.
func TestEventID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return TestEventPrefix + hex.EncodeToString(b[:])
}

// IsDeliveryID reports whether id has the form of a delivery id:
// DeliveryPrefix, then 1 to 120 lowercase letters, digits and '_' (an
// event's part, a subscription's tag, a replay's part; test deliveries'
// hex). The admin API takes no other in a path, and the journal no other
// in a page's cursor (anything else, a NUL or invalid UTF-8, is a text
// parameter PostgreSQL would refuse).
func IsDeliveryID(id string) bool {
	rest, ok := strings.CutPrefix(id, DeliveryPrefix)
	if !ok || rest == "" || len(rest) > 120 {
		return false
	}
	for i := range len(rest) {
		if c := rest[i]; (c < '0' || c > '9') && (c < 'a' || c > 'z') && c != '_' {
			return false
		}
	}
	return true
}

// DeliveryID is the id of the delivery of an event to a subscription:
// derived from the pair, so a replay finds the delivery it made before.
// It is "dlv_", the event id without "whk_", then the subscription's tag
// (SubscriptionTag), so deliveries sort like their events and the
// journal's primary key grows at its end instead of at random places.
func DeliveryID(eventID, subscriptionID string) string {
	return DeliveryIDTagged(eventID, SubscriptionTag(subscriptionID))
}

// DeliveryIDTagged is DeliveryID with the subscription's tag made
// already (a hash: a router keeps it with the subscription).
func DeliveryIDTagged(eventID, tag string) string {
	return deliveryBase(eventID) + tag
}

// SubscriptionTag is the subscription's part of its delivery ids: TagLen
// characters (65 bits) of a hash of its id. Two subscriptions whose tags
// collide would share delivery ids, so a registry must refuse the pair.
func SubscriptionTag(subscriptionID string) string {
	sum := sha256.Sum256([]byte(subscriptionID))
	return encoding.EncodeToString(sum[:9])[:TagLen]
}

// DeliveryRange returns the key range [lo, hi), in byte order (COLLATE
// "C"), that holds every delivery id of the event, whatever the
// subscription, and no delivery id of another event. It is the range the
// journal's retention SQL computes:
//
//	x.id >= 'dlv_' || substr(ev.id, 5) AND x.id < 'dlv_' || substr(ev.id, 5) || '~'
//
// hi is lo + "~": every character a tag is made of sorts before '~'. No
// other event's deliveries fall in the range because event ids without
// their prefix never are a prefix of one another: stream and timed ids
// have 26 characters of base32, test ids start with "test_" ('_' is no
// base32 digit) and have 29.
func DeliveryRange(eventID string) (lo, hi string) {
	lo = deliveryBase(eventID)
	return lo, lo + "~"
}

// deliveryBase is what every delivery id of the event starts with.
func deliveryBase(eventID string) string {
	return DeliveryPrefix + strings.TrimPrefix(eventID, EventPrefix)
}

// ReplayPrefix starts every replay id.
const ReplayPrefix = "rpl_"

// NewReplayID returns the id of a replay requested at now: "rpl_" + 16
// characters, 6 bytes of the time in milliseconds then 4 random bytes, so
// a subscription's replays sort in the order they were asked for. Unlike
// event ids it is drawn, not derived: two replays of the same window are
// two operators' requests, and each sends its own deliveries.
func NewReplayID(now time.Time) string {
	var b [10]byte
	ms := uint64(now.UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	_, _ = rand.Read(b[6:])
	return ReplayPrefix + encoding.EncodeToString(b[:])
}

// ReplayDeliveryID is the id of the delivery of an event to a
// subscription made by a replay: DeliveryID, then "_" and the replay id
// without "rpl_". It cannot be a normal delivery's id (those end with the
// tag), so a replay of an event the subscription already received adds a
// delivery instead of colliding with it; and it stays inside the event's
// DeliveryRange ('_' and the base32 digits sort before '~'), so retention
// still finds every delivery of an event by the range of the primary key.
// Derived from the triple, so a replay that resumes after a crash finds
// the deliveries it made before.
func ReplayDeliveryID(eventID, subscriptionID, replayID string) string {
	return DeliveryID(eventID, subscriptionID) + "_" + strings.TrimPrefix(replayID, ReplayPrefix)
}
