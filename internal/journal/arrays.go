package journal

import (
	"encoding/binary"
	"time"
)

// arrays encodes the one-dimensional arrays of a batch's hot inserts
// (events, deliveries, attempts: `unnest($1::text[], ...)`) in
// PostgreSQL's binary array format (array_recv), all in one buffer that
// is reused from batch to batch.
//
// pgx encodes a []string or []time.Time parameter through interfaces: an
// allocation per element, and a buffer that starts small for every
// statement and doubles as it grows. At catch-up rates that was the
// journal writer's largest cost in dzhook (~4 µs and ~40 allocations per
// event, BENCHMARKS.md). The other statements of a batch, small and
// rare, are still encoded by pgx.
type arrays struct {
	buf    []byte
	bounds [][2]int // each array's bytes in buf
	start  int      // where the array being written began
	flags  int      // the offset of its has-null flag
}

// The element types' OIDs, as array_recv checks them against the
// parameter's type.
const (
	oidBool        = 16
	oidBytea       = 17
	oidInt8        = 20
	oidInt4        = 23
	oidText        = 25
	oidTimestamptz = 1184
)

// microsecondsToY2K is the Unix time, in microseconds, of PostgreSQL's
// epoch (2000-01-01 00:00:00 UTC), from which timestamptz counts.
const microsecondsToY2K = 946684800 * 1000000

func (a *arrays) reset() {
	a.buf, a.bounds = a.buf[:0], a.bounds[:0]
}

// begin starts an array of n elements of type oid.
func (a *arrays) begin(oid uint32, n int) {
	a.start = len(a.buf)
	a.buf = binary.BigEndian.AppendUint32(a.buf, 1) // dimensions
	a.flags = len(a.buf)
	a.buf = binary.BigEndian.AppendUint32(a.buf, 0) // has nulls: set by null
	a.buf = binary.BigEndian.AppendUint32(a.buf, oid)
	a.buf = binary.BigEndian.AppendUint32(a.buf, uint32(n))
	a.buf = binary.BigEndian.AppendUint32(a.buf, 1) // lower bound
}

// end closes the array begun last.
func (a *arrays) end() {
	a.bounds = append(a.bounds, [2]int{a.start, len(a.buf)})
}

// column writes an array of n elements of type oid: put(i) writes the
// i-th (one call of text, bytes, null...).
func (a *arrays) column(oid uint32, n int, put func(i int)) {
	a.begin(oid, n)
	for i := range n {
		put(i)
	}
	a.end()
}

// take returns the arrays written since the last take, in order. They
// share the buffer, which only grows until the next reset: valid until
// then (an array written before the buffer moved stays where it was).
func (a *arrays) take() [][]byte {
	out := make([][]byte, len(a.bounds))
	for i, b := range a.bounds {
		out[i] = a.buf[b[0]:b[1]:b[1]]
	}
	a.bounds = a.bounds[:0]
	return out
}

func (a *arrays) null() {
	binary.BigEndian.PutUint32(a.buf[a.flags:], 1)
	a.buf = binary.BigEndian.AppendUint32(a.buf, 0xFFFFFFFF) // length -1
}

func (a *arrays) text(s string) {
	a.buf = binary.BigEndian.AppendUint32(a.buf, uint32(len(s)))
	a.buf = append(a.buf, s...)
}

// textOrNull writes s, or NULL when it is empty.
func (a *arrays) textOrNull(s string) {
	if s == "" {
		a.null()
		return
	}
	a.text(s)
}

// bytes writes b, or NULL when it is nil (as pgx does: an empty, non-nil
// slice is an empty bytea).
func (a *arrays) bytes(b []byte) {
	if b == nil {
		a.null()
		return
	}
	a.buf = binary.BigEndian.AppendUint32(a.buf, uint32(len(b)))
	a.buf = append(a.buf, b...)
}

func (a *arrays) int4(n int32) {
	a.buf = binary.BigEndian.AppendUint32(a.buf, 4)
	a.buf = binary.BigEndian.AppendUint32(a.buf, uint32(n))
}

// int4OrNull writes n, or NULL when it is 0.
func (a *arrays) int4OrNull(n int) {
	if n == 0 {
		a.null()
		return
	}
	a.int4(int32(n))
}

func (a *arrays) int8(n int64) {
	a.buf = binary.BigEndian.AppendUint32(a.buf, 8)
	a.buf = binary.BigEndian.AppendUint64(a.buf, uint64(n))
}

func (a *arrays) bool(b bool) {
	a.buf = binary.BigEndian.AppendUint32(a.buf, 1)
	if b {
		a.buf = append(a.buf, 1)
	} else {
		a.buf = append(a.buf, 0)
	}
}

// timestamptz writes t in microseconds since 2000-01-01 UTC; what is
// finer than a microsecond is dropped, as pgx drops it.
func (a *arrays) timestamptz(t time.Time) {
	a.int8(t.Unix()*1000000 + int64(t.Nanosecond())/1000 - microsecondsToY2K)
}

// timestamptzOrNull writes t, or NULL when it is zero.
func (a *arrays) timestamptzOrNull(t time.Time) {
	if t.IsZero() {
		a.null()
		return
	}
	a.timestamptz(t)
}
