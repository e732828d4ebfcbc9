package cdc

import (
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// Op is what a change did.
type Op uint8

// The operations of a Change.
const (
	OpInsert Op = iota + 1
	OpUpdate
	OpDelete
	OpTruncate
	// OpMessage is a pg_logical_emit_message record; see Change.Message.
	OpMessage
)

func (o Op) String() string {
	switch o {
	case OpInsert:
		return "insert"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	case OpTruncate:
		return "truncate"
	case OpMessage:
		return "message"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// State says what a Value holds.
type State uint8

// The states of a Value.
const (
	// Present: V holds the decoded value.
	Present State = iota
	// Null: the column is NULL; V is nil.
	Null
	// Unchanged: an unchanged TOASTed value whose content the stream did
	// not carry (pgoutput's 'u') and no old tuple could supply. V is nil.
	// It is neither NULL nor a change.
	Unchanged
)

// Value is one column of a tuple.
//
// V holds, by PostgreSQL type: bool; int64 (int2, int4, int8, oid);
// float64 (float4, float8; NaN and ±Infinity as their text); string
// (numeric as an exact decimal, text, varchar, char, uuid, enums, and any
// type dzhook cannot decode, as PostgreSQL printed it); json.RawMessage
// (json, jsonb, as sent); time.Time (timestamptz and timestamp in UTC,
// date at midnight UTC); []any (arrays: each element decoded as a value
// of its type is, uuid and bytea as their text; a multi-dimensional array
// as nested []any).
type Value struct {
	State State
	V     any
}

// Tuple is a row's values, in the order of its Relation's columns.
type Tuple []Value

// Change is one committed row change or logical decoding message, as the
// stream hands it on. Its values are copies: a handler may keep a Change.
type Change struct {
	Op Op
	// Relation is the table (nil for OpMessage).
	Relation *Relation
	// New is the new row (insert, update); nil otherwise.
	New Tuple
	// Old is the old row: all columns under REPLICA IDENTITY FULL; for a
	// delete otherwise, the key columns. An update has none without FULL,
	// even one that changed the key: PostgreSQL then sends the old key
	// with every other column NULL, which would read as old values (a
	// status "changed" from null, an unchanged TOASTed title filled with
	// NULL).
	Old Tuple
	// Message is set for OpMessage.
	Message *Message

	// XID is the transaction id (0 for a non-transactional message).
	XID uint32
	// CommitLSN is the LSN of the transaction's commit record (for a
	// non-transactional message, the message's own LSN). With Ordinal it
	// identifies the change across replays.
	CommitLSN pglogrepl.LSN
	// CommitTime is when the transaction committed (for a
	// non-transactional message, when the server sent it).
	CommitTime time.Time
	// Ordinal is the change's position within its transaction, from 0.
	Ordinal int
}

// Message is a logical decoding message (pg_logical_emit_message).
type Message struct {
	Prefix        string
	Content       []byte
	Transactional bool
	LSN           pglogrepl.LSN
}

// Commit ends a transaction.
type Commit struct {
	XID        uint32
	CommitLSN  pglogrepl.LSN
	CommitTime time.Time
	// EndLSN is the end of the commit record: what the stream reports as
	// flushed once the handler has acknowledged CommitLSN.
	EndLSN pglogrepl.LSN
	// Changes is how many changes the transaction handed on.
	Changes int
}

// Get returns the value of the named column in t, which belongs to rel.
func (rel *Relation) Get(t Tuple, column string) (Value, bool) {
	i, ok := rel.index[column]
	if !ok || i >= len(t) {
		return Value{}, false
	}
	return t[i], true
}

// NewValue returns the named column of the new row.
func (c *Change) NewValue(column string) (Value, bool) {
	if c.Relation == nil || c.New == nil {
		return Value{}, false
	}
	return c.Relation.Get(c.New, column)
}

// OldValue returns the named column of the old row, when it was sent.
func (c *Change) OldValue(column string) (Value, bool) {
	if c.Relation == nil || c.Old == nil {
		return Value{}, false
	}
	return c.Relation.Get(c.Old, column)
}
