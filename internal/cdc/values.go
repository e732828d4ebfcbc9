package cdc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// decodeFunc turns one column's text-format value into its Go value.
type decodeFunc func(src []byte) any

// typeRegistry decodes text-format values by type OID: hand-written fast
// paths for the types DZDESK's tables use, pgtype for the rest (arrays,
// intervals, …), and the catalog for enums, domains and arrays of them.
// A value it cannot decode is kept as PostgreSQL's text, never dropped.
type typeRegistry struct {
	m *pgtype.Map
	// alias maps a domain to the type its values decode as.
	alias map[uint32]uint32
	// text lists OIDs known to be kept as text (enums, composites, …).
	text map[uint32]bool
}

func newTypeRegistry() *typeRegistry {
	return &typeRegistry{m: pgtype.NewMap(), alias: make(map[uint32]uint32), text: make(map[uint32]bool)}
}

// Built-in type OIDs with fast paths.
const (
	oidBool        = 16
	oidBytea       = 17
	oidChar        = 18
	oidName        = 19
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidText        = 25
	oidOID         = 26
	oidJSON        = 114
	oidFloat4      = 700
	oidFloat8      = 701
	oidBPChar      = 1042
	oidVarchar     = 1043
	oidDate        = 1082
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidNumeric     = 1700
	oidUUID        = 2950
	oidJSONB       = 3802
)

func fastDecoder(oid uint32) decodeFunc {
	switch oid {
	case oidBool:
		return decodeBool
	case oidInt2, oidInt4, oidInt8, oidOID:
		return decodeInt
	case oidFloat4, oidFloat8:
		return decodeFloat
	case oidText, oidVarchar, oidName, oidChar, oidUUID, oidNumeric:
		return decodeString
	case oidBPChar:
		return decodeBPChar
	case oidJSON, oidJSONB:
		return decodeJSON
	case oidTimestamptz, oidTimestamp:
		return decodeTimestamp
	case oidDate:
		return decodeDate
	}
	return nil
}

// ensure makes oid decodable, asking the catalog about types that are not
// built in.
func (r *typeRegistry) ensure(ctx context.Context, loader TypeLoader, oid uint32) error {
	return r.ensureDepth(ctx, loader, oid, 0)
}

func (r *typeRegistry) ensureDepth(ctx context.Context, loader TypeLoader, oid uint32, depth int) error {
	if fastDecoder(oid) != nil || r.text[oid] {
		return nil
	}
	if _, ok := r.alias[oid]; ok {
		return nil
	}
	if _, ok := r.m.TypeForOID(oid); ok {
		return nil
	}
	if loader == nil || depth > 8 {
		r.text[oid] = true
		return nil
	}
	info, err := loader.LoadType(ctx, oid)
	if err != nil {
		return &typeLookupError{oid: oid, err: err}
	}
	switch {
	case info.Kind == 'e':
		r.m.RegisterType(&pgtype.Type{Name: info.Name, OID: oid, Codec: &pgtype.EnumCodec{}})
	case info.Kind == 'd' && info.BaseOID != 0:
		if err := r.ensureDepth(ctx, loader, info.BaseOID, depth+1); err != nil {
			return err
		}
		r.alias[oid] = info.BaseOID
	case info.ElemOID != 0:
		if err := r.ensureDepth(ctx, loader, info.ElemOID, depth+1); err != nil {
			return err
		}
		elem, ok := r.m.TypeForOID(r.resolve(info.ElemOID))
		if !ok {
			r.text[oid] = true
			return nil
		}
		r.m.RegisterType(&pgtype.Type{Name: info.Name, OID: oid, Codec: &pgtype.ArrayCodec{ElementType: elem, Delimiter: info.Delimiter}})
	default:
		r.text[oid] = true
	}
	return nil
}

// typeLookupError: the catalog could not be asked about a type (a lost
// connection, a server restarting). It ends the replication session, not
// the stream: the next session describes the relation again, and the
// lookup is retried then, after the stream's backoff.
type typeLookupError struct {
	oid uint32
	err error
}

func (e *typeLookupError) Error() string { return fmt.Sprintf("load type %d: %v", e.oid, e.err) }

func (e *typeLookupError) Unwrap() error { return e.err }

// PublicReason implements PublicReason: the stream's Problem while it
// reconnects.
func (e *typeLookupError) PublicReason() string {
	return "could not look up a column's type in the source's catalog; reconnecting (the log has the detail)"
}

// resolve follows domain aliases to the type that decodes the values.
func (r *typeRegistry) resolve(oid uint32) uint32 {
	for range 8 {
		base, ok := r.alias[oid]
		if !ok {
			break
		}
		oid = base
	}
	return oid
}

// decoder returns the decode function for a column of type oid.
func (r *typeRegistry) decoder(oid uint32) decodeFunc {
	oid = r.resolve(oid)
	if f := fastDecoder(oid); f != nil {
		return f
	}
	if r.text[oid] {
		return decodeString
	}
	t, ok := r.m.TypeForOID(oid)
	if !ok {
		return decodeString
	}
	ac, isArray := t.Codec.(*pgtype.ArrayCodec)
	if !isArray || ac.ElementType == nil {
		// Scalars beyond the fast paths (interval, inet, money, bytea, …)
		// stay as PostgreSQL printed them: exact, and readable in JSON.
		return decodeString
	}
	delim := ac.Delimiter
	if delim == 0 {
		delim = ','
	}
	// Elements decode as the scalars of their type do (array.go).
	return arrayDecoder(r.decoder(ac.ElementType.OID), delim)
}

func decodeString(src []byte) any { return string(src) }

// decodeBPChar is a char(n) value without the padding PostgreSQL adds,
// as its cast to text gives it: padded, 'OPEN' in a char(10) missed the
// translation values: {OPEN: open} and went out as "OPEN      ", and an
// active column's 'disabled  ' read as no boolean at all.
func decodeBPChar(src []byte) any { return string(bytes.TrimRight(src, " ")) }

func decodeBool(src []byte) any {
	return len(src) == 1 && src[0] == 't'
}

func decodeInt(src []byte) any {
	n, ok := parseInt(src)
	if !ok {
		return string(src)
	}
	return n
}

// parseInt parses a decimal integer without allocating.
func parseInt(src []byte) (int64, bool) {
	if len(src) == 0 || len(src) > 20 {
		return 0, false
	}
	neg := src[0] == '-'
	i := 0
	if neg {
		i = 1
		if len(src) == 1 {
			return 0, false
		}
	}
	var n uint64
	for ; i < len(src); i++ {
		c := src[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (math.MaxUint64-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	if neg {
		if n > 1<<63 {
			return 0, false
		}
		return -int64(n), true
	}
	if n > math.MaxInt64 {
		return 0, false
	}
	return int64(n), true
}

func decodeFloat(src []byte) any {
	f, err := strconv.ParseFloat(string(src), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return string(src) // JSON has no NaN or Infinity
	}
	return f
}

func decodeJSON(src []byte) any {
	return json.RawMessage(append([]byte(nil), src...))
}

// decodeTimestamp parses PostgreSQL's ISO output (DateStyle ISO, TimeZone
// UTC, which the stream pins): "2006-01-02 15:04:05.999999+00", with or
// without fraction and offset. Anything else ("infinity", BC dates, years
// past 9999) is kept as text.
func decodeTimestamp(src []byte) any {
	t, ok := parseTimestamp(src)
	if !ok {
		return string(src)
	}
	return t
}

// decodeDate parses "2006-01-02" into midnight UTC; anything else
// ("infinity", BC dates) is kept as text.
func decodeDate(src []byte) any {
	if len(src) == 10 {
		if t, ok := parseTimestamp(append(append(make([]byte, 0, 19), src...), " 00:00:00"...)); ok {
			return t
		}
	}
	return string(src)
}

func parseTimestamp(s []byte) (time.Time, bool) {
	if len(s) < 19 || s[4] != '-' || s[7] != '-' || s[10] != ' ' || s[13] != ':' || s[16] != ':' {
		return time.Time{}, false
	}
	num := func(b []byte) (int, bool) {
		n := 0
		for _, c := range b {
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, true
	}
	year, ok1 := num(s[0:4])
	month, ok2 := num(s[5:7])
	day, ok3 := num(s[8:10])
	hour, ok4 := num(s[11:13])
	minute, ok5 := num(s[14:16])
	sec, ok6 := num(s[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || month < 1 || month > 12 || day < 1 || day > 31 || hour > 24 || minute > 59 || sec > 60 {
		return time.Time{}, false
	}
	rest := s[19:]
	nsec := 0
	if len(rest) > 0 && rest[0] == '.' {
		i := 1
		scale := 100_000_000
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			if scale == 0 {
				return time.Time{}, false
			}
			nsec += int(rest[i]-'0') * scale
			scale /= 10
			i++
		}
		if i == 1 {
			return time.Time{}, false
		}
		rest = rest[i:]
	}
	offset := 0
	if len(rest) > 0 {
		if rest[0] != '+' && rest[0] != '-' || len(rest) < 3 {
			return time.Time{}, false
		}
		sign := 1
		if rest[0] == '-' {
			sign = -1
		}
		h, ok := num(rest[1:3])
		if !ok {
			return time.Time{}, false
		}
		offset = h * 3600
		rest = rest[3:]
		for _, unit := range []int{60, 1} {
			if len(rest) == 0 {
				break
			}
			if len(rest) < 3 || rest[0] != ':' {
				return time.Time{}, false
			}
			v, ok := num(rest[1:3])
			if !ok {
				return time.Time{}, false
			}
			offset += v * unit
			rest = rest[3:]
		}
		if len(rest) != 0 {
			return time.Time{}, false
		}
		offset *= sign
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	return t.Add(-time.Duration(offset) * time.Second), true
}
