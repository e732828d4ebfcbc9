package journal

import (
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// sendBuffer is a journal connection's buffer for the pipeline a batch
// sends: pgx encodes every message of the pipeline into its frontend's
// buffer, and after each flush it replaces a buffer that grew past 1 KiB
// by a new 1 KiB one (pgproto3.Frontend.Flush). So every batch's Bind
// messages grew a new buffer, doubling from 1 KiB to the batch's size, a
// fifth of everything dzhook allocated at 500 tx/s and, on a heap that
// grows, a page fault for each new page (BENCHMARKS.md, "seventh stop").
//
// Sent first in a pipeline, a sendBuffer encodes nothing: its Encode
// hands the frontend this connection's own buffer, sized for the batch,
// with whatever the frontend held copied into it, and the batch's
// messages are then encoded there. Each connection has its own
// (pgconn.PgConn.CustomData), since a frontend may keep it after a
// flush; one is never shared between connections. A batch larger than
// maxSendBuffer (a catch-up's) gets one buffer of its size that is not
// kept.
type sendBuffer struct {
	buf  []byte
	need int // set before each Send: the batch's size, about
}

// maxSendBuffer is the largest send buffer a connection keeps: a batch
// of about 150 events with their bodies; a live stream's batches are
// smaller (at 500 tx/s and a 50 ms linger, 25 events, about 40 KiB).
const maxSendBuffer = 256 << 10

const sendBufferKey = "dzhook.journal.sendBuffer"

// Encode appends nothing to dst: it returns dst's bytes in a buffer with
// room for the batch.
func (sb *sendBuffer) Encode(dst []byte) ([]byte, error) {
	need := len(dst) + sb.need
	if cap(dst) >= need {
		return dst, nil
	}
	if need > maxSendBuffer {
		return append(make([]byte, 0, need), dst...), nil
	}
	if cap(sb.buf) < need {
		sb.buf = make([]byte, 0, min(max(need+need/4, 4096), maxSendBuffer))
	}
	return append(sb.buf[:0], dst...), nil
}

// Decode is never called: a sendBuffer is only ever sent.
func (sb *sendBuffer) Decode([]byte) error {
	return errors.New("journal: a send buffer is not a message")
}

// Frontend marks sendBuffer as a pgproto3.FrontendMessage.
func (sb *sendBuffer) Frontend() {}

// reserve makes room in conn's frontend buffer for a pipeline of about
// need bytes, before anything of it is encoded. Only on a connection at
// rest: the frontend is written without pgconn's lock.
func reserve(conn *pgconn.PgConn, need int) {
	if conn.IsBusy() || conn.IsClosed() {
		return
	}
	data := conn.CustomData()
	sb, _ := data[sendBufferKey].(*sendBuffer)
	if sb == nil {
		sb = new(sendBuffer)
		data[sendBufferKey] = sb
	}
	sb.need = need
	conn.Frontend().Send(sb)
}

// pipelineSize is about what sending stmts takes: each Bind carries its
// parameters with a length each, and the statement's name (its SQL).
func pipelineSize(stmts []statement, built []*pgx.ExtendedQueryBuilder) int {
	n := 5 // Sync
	for i, st := range stmts {
		n += 64 + len(st.sql)
		params := st.params
		if built[i] != nil {
			params = built[i].ParamValues
		}
		for _, p := range params {
			n += 4 + len(p)
		}
	}
	return n
}
