package cdc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// This file parses pgoutput messages (protocol version 1) itself rather
// than with pglogrepl.Parse: pglogrepl's decoders index the buffer without
// bounds checks, so a malformed frame panics, and they allocate for every
// column. Here every read is checked (a malformed message is an error
// naming what was cut short) and tuple values are decoded straight into
// typed Values.

// errShort reports a message that ended before its fields did.
var errShort = errors.New("message is truncated")

// reader reads big-endian fields from a message, remembering the first
// error so a parse reads straight through and checks once.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: reading %s at byte %d of %d", errShort, what, r.off, len(r.b))
	}
}

func (r *reader) need(n int, what string) bool {
	if r.err != nil {
		return false
	}
	if n < 0 || len(r.b)-r.off < n {
		r.fail(what)
		return false
	}
	return true
}

func (r *reader) byte(what string) byte {
	if !r.need(1, what) {
		return 0
	}
	r.off++
	return r.b[r.off-1]
}

func (r *reader) uint16(what string) uint16 {
	if !r.need(2, what) {
		return 0
	}
	r.off += 2
	return binary.BigEndian.Uint16(r.b[r.off-2:])
}

func (r *reader) uint32(what string) uint32 {
	if !r.need(4, what) {
		return 0
	}
	r.off += 4
	return binary.BigEndian.Uint32(r.b[r.off-4:])
}

func (r *reader) uint64(what string) uint64 {
	if !r.need(8, what) {
		return 0
	}
	r.off += 8
	return binary.BigEndian.Uint64(r.b[r.off-8:])
}

func (r *reader) lsn(what string) pglogrepl.LSN { return pglogrepl.LSN(r.uint64(what)) }

// time reads a timestamp in microseconds since 2000-01-01 UTC.
func (r *reader) time(what string) time.Time {
	us := int64(r.uint64(what))
	return pgEpoch.Add(time.Duration(us) * time.Microsecond).UTC()
}

var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// string reads a NUL-terminated string.
func (r *reader) string(what string) string {
	if r.err != nil {
		return ""
	}
	for i := r.off; i < len(r.b); i++ {
		if r.b[i] == 0 {
			s := string(r.b[r.off:i])
			r.off = i + 1
			return s
		}
	}
	r.fail(what + " (no terminating NUL)")
	return ""
}

func (r *reader) bytes(n int, what string) []byte {
	if !r.need(n, what) {
		return nil
	}
	r.off += n
	return r.b[r.off-n : r.off]
}

// begin is a parsed 'B' message.
type begin struct {
	FinalLSN   pglogrepl.LSN
	CommitTime time.Time
	XID        uint32
}

func parseBegin(b []byte) (begin, error) {
	r := reader{b: b, off: 1}
	m := begin{FinalLSN: r.lsn("final LSN"), CommitTime: r.time("commit time"), XID: r.uint32("xid")}
	return m, r.err
}

// commit is a parsed 'C' message.
type commit struct {
	CommitLSN  pglogrepl.LSN
	EndLSN     pglogrepl.LSN
	CommitTime time.Time
}

func parseCommit(b []byte) (commit, error) {
	r := reader{b: b, off: 1}
	r.byte("flags")
	m := commit{CommitLSN: r.lsn("commit LSN"), EndLSN: r.lsn("end LSN"), CommitTime: r.time("commit time")}
	return m, r.err
}

func parseRelation(b []byte) (*Relation, error) {
	r := reader{b: b, off: 1}
	rel := &Relation{
		ID:              r.uint32("relation id"),
		Namespace:       r.string("namespace"),
		Name:            r.string("relation name"),
		ReplicaIdentity: r.byte("replica identity"),
	}
	n := int(r.uint16("column count"))
	if r.err == nil && n > (len(b)-r.off)/10 { // each column takes at least 10 bytes
		return nil, fmt.Errorf("%w: %d columns announced in %d bytes", errShort, n, len(b)-r.off)
	}
	rel.Columns = make([]Column, 0, n)
	for range n {
		flags := r.byte("column flags")
		c := Column{Key: flags&1 == 1, Name: r.string("column name"), TypeOID: r.uint32("column type"), TypeMod: int32(r.uint32("column typmod"))}
		rel.Columns = append(rel.Columns, c)
	}
	if r.err != nil {
		return nil, r.err
	}
	if rel.Name == "" {
		return nil, errors.New("relation message without a name")
	}
	return rel, nil
}

// message is a parsed 'M' message.
func parseMessage(b []byte) (*Message, error) {
	r := reader{b: b, off: 1}
	flags := r.byte("flags")
	m := &Message{Transactional: flags&1 == 1, LSN: r.lsn("message LSN"), Prefix: r.string("prefix")}
	n := int(r.uint32("content length"))
	m.Content = append([]byte(nil), r.bytes(n, "content")...)
	return m, r.err
}

// rowChange is a parsed 'I', 'U' or 'D' message before its tuples are
// matched with the relation.
type rowChange struct {
	RelationID uint32
	Old, New   []rawColumn
}

// rawColumn is one column of a tuple as sent: its kind ('n', 'u', 't',
// 'b') and bytes (aliasing the message).
type rawColumn struct {
	Kind byte
	Data []byte
}

func (r *reader) tuple(dst []rawColumn) []rawColumn {
	n := int(r.uint16("tuple column count"))
	if r.err == nil && n > len(r.b)-r.off { // each column takes at least one byte
		r.fail(fmt.Sprintf("tuple of %d columns", n))
		return nil
	}
	if cap(dst) < n {
		dst = make([]rawColumn, 0, n)
	}
	dst = dst[:0]
	for range n {
		kind := r.byte("column kind")
		switch kind {
		case 'n', 'u':
			dst = append(dst, rawColumn{Kind: kind})
		case 't', 'b':
			l := int(r.uint32("value length"))
			dst = append(dst, rawColumn{Kind: kind, Data: r.bytes(l, "value")})
		default:
			if r.err == nil {
				r.err = fmt.Errorf("unknown tuple column kind %q at byte %d", kind, r.off-1)
			}
			return nil
		}
	}
	return dst
}

// parseRowChange parses an insert, update or delete. Its raw columns go
// into the scratch slices given (reused from message to message).
func parseRowChange(b []byte, oldBuf, newBuf []rawColumn) (rowChange, error) {
	r := reader{b: b, off: 1}
	var m rowChange
	m.RelationID = r.uint32("relation id")
	kind := b[0]
	switch kind {
	case 'I':
		if t := r.byte("tuple marker"); r.err == nil && t != 'N' {
			return m, fmt.Errorf("insert: tuple marker %q, want 'N'", t)
		}
		m.New = r.tuple(newBuf)
	case 'U':
		t := r.byte("tuple marker")
		if t == 'K' || t == 'O' {
			m.Old = r.tuple(oldBuf)
			if t == 'K' {
				// The old key alone (a key changed under REPLICA
				// IDENTITY DEFAULT or USING INDEX): its other columns are
				// NULL, not the old values. Read, then left out.
				m.Old = nil
			}
			t = r.byte("tuple marker")
		}
		if r.err == nil && t != 'N' {
			return m, fmt.Errorf("update: tuple marker %q, want 'N'", t)
		}
		m.New = r.tuple(newBuf)
	case 'D':
		t := r.byte("tuple marker")
		if r.err == nil && t != 'K' && t != 'O' {
			return m, fmt.Errorf("delete: tuple marker %q, want 'K' or 'O'", t)
		}
		m.Old = r.tuple(oldBuf)
	}
	return m, r.err
}

func parseTruncate(b []byte) ([]uint32, error) {
	r := reader{b: b, off: 1}
	n := int(r.uint32("relation count"))
	r.byte("options")
	if r.err == nil && n > (len(b)-r.off)/4 {
		return nil, fmt.Errorf("%w: %d relations announced in %d bytes", errShort, n, len(b)-r.off)
	}
	ids := make([]uint32, 0, n)
	for range n {
		ids = append(ids, r.uint32("relation id"))
	}
	return ids, r.err
}

// tupleValues decodes raw columns with the relation's decoders. A column
// the relation does not describe is an error: the relation cache is stale,
// which the protocol rules out, so something is wrong with the stream.
func tupleValues(rel *Relation, raw []rawColumn) (Tuple, error) {
	if raw == nil {
		return nil, nil
	}
	if len(raw) > len(rel.Columns) {
		return nil, fmt.Errorf("tuple of %d columns for relation %s of %d", len(raw), rel.QualifiedName(), len(rel.Columns))
	}
	t := make(Tuple, len(raw))
	for i, c := range raw {
		switch c.Kind {
		case 'n':
			t[i] = Value{State: Null}
		case 'u':
			t[i] = Value{State: Unchanged}
		case 't':
			t[i] = Value{V: rel.decoders[i](c.Data)}
		case 'b':
			// Only sent when the binary option is on, which dzhook never
			// asks for; keep the bytes rather than guess.
			t[i] = Value{V: append([]byte(nil), c.Data...)}
		}
	}
	return t, nil
}

// fillUnchanged gives each unchanged TOASTed column of the new tuple the old
// tuple's value, which REPLICA IDENTITY FULL provides. Without one the
// column stays Unchanged: never NULL, never a change.
func fillUnchanged(newT, oldT Tuple) {
	for i := range newT {
		if newT[i].State == Unchanged && i < len(oldT) && oldT[i].State != Unchanged {
			newT[i] = oldT[i]
		}
	}
}
