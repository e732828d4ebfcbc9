package journal

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"testing"
	"unsafe"

	"golang.org/x/sync/errgroup"

	"github.com/dzdesk/dzhook/internal/pgtest"
)

// TestSendBufferEncode: a send buffer encodes nothing, keeps what the
// frontend held, leaves a buffer with room as it is, and keeps a buffer
// of its own only up to maxSendBuffer.
func TestSendBufferEncode(t *testing.T) {
	sb := new(sendBuffer)

	held := append(make([]byte, 0, 8), "abc"...)
	sb.need = 4096
	got, err := sb.Encode(held)
	if err != nil || string(got) != "abc" || cap(got) < 3+4096 {
		t.Fatalf("Encode = %q (cap %d, err %v), want abc with room for 4096 more", got, cap(got), err)
	}
	if unsafe.SliceData(got) != unsafe.SliceData(sb.buf) {
		t.Fatal("the room given is not the buffer kept")
	}

	// Handed back by the frontend: no new buffer, nothing allocated.
	kept := unsafe.SliceData(sb.buf)
	sb.need = 2000
	if a := testing.AllocsPerRun(100, func() { got, _ = sb.Encode(sb.buf[:0]) }); a != 0 || unsafe.SliceData(got) != kept {
		t.Errorf("a batch that fits: %v allocations, same buffer %v; want none and the same", a, unsafe.SliceData(got) == kept)
	}
	// Another buffer that has room is left as it is.
	other := make([]byte, 2, 10000)
	if got, _ = sb.Encode(other); unsafe.SliceData(got) != unsafe.SliceData(other) || len(got) != 2 {
		t.Error("a buffer with room was replaced")
	}

	// A batch past maxSendBuffer gets a buffer of its size, not kept.
	sb.need = maxSendBuffer + 1
	if got, _ = sb.Encode([]byte("xy")); string(got) != "xy" || cap(got) < maxSendBuffer+3 {
		t.Errorf("large batch: %q with cap %d", got, cap(got))
	}
	if unsafe.SliceData(sb.buf) != kept {
		t.Error("a buffer past maxSendBuffer was kept")
	}
}

// TestWritesKeepASendBufferPerConnection: batches of every size written
// at once from two goroutines on two connections arrive byte for byte;
// each connection keeps a buffer of its own, reused by the next batch
// that fits, and the connection serves other statements as before.
func TestWritesKeepASendBufferPerConnection(t *testing.T) {
	db := pgtest.NewDB(t)
	s := newStoreOn(t, db.DSN, 2)
	ctx := context.Background()
	sizes := []int{1, 25, 100, 3, 400, 25, 1} // 400 events: past maxSendBuffer
	// Two connections open, so that the writers may each have one.
	c0, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c1, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c0.Release()
	c1.Release()
	var g errgroup.Group
	for w := range 2 {
		g.Go(func() error {
			start := w * 100000
			for i, n := range sizes {
				b := batchOf(start, n)
				for j := range b.Events {
					b.Events[j].Body = bytes.Repeat([]byte{byte('a' + (w*7+i+j)%26)}, 600+j%50)
				}
				if err := s.Write(ctx, b); err != nil {
					return fmt.Errorf("writer %d, batch %d: %w", w, i, err)
				}
				start += n
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	conn := db.Connect(t)
	rows, err := conn.Query(ctx, `SELECT id, body FROM dzhook.events`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]byte{}
	for rows.Next() {
		var id string
		var body []byte
		if err := rows.Scan(&id, &body); err != nil {
			t.Fatal(err)
		}
		got[id] = body
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for w := range 2 {
		start := w * 100000
		for i, n := range sizes {
			for j := range n {
				id := fmt.Sprintf("whk_%026d", start+j)
				want := bytes.Repeat([]byte{byte('a' + (w*7+i+j)%26)}, 600+j%50)
				if !bytes.Equal(got[id], want) {
					t.Fatalf("writer %d, batch %d, event %d: body of %d bytes %.10q…, want %d of %q", w, i, j, len(got[id]), got[id], len(want), want[0])
				}
			}
			start += n
		}
	}
	if sum := 2 * sumOf(sizes); len(got) != sum {
		t.Errorf("%d events, want %d", len(got), sum)
	}

	// Each connection has a buffer of its own, and the batches that fit
	// it reuse it.
	before := sendBuffers(t, s)
	if len(before) != 2 {
		t.Fatalf("%d send buffers on 2 connections, want one each", len(before))
	}
	for i := range 4 {
		if err := s.Write(ctx, batchOf(500000+25*i, 25)); err != nil {
			t.Fatal(err)
		}
		if after := sendBuffers(t, s); !maps.Equal(after, before) {
			t.Fatalf("after a batch of 25: send buffers %v, want the same %v", after, before)
		}
	}
}

// sendBuffers acquires every connection of s's pool and returns their
// send buffers (where each begins, its capacity), after checking each
// still runs a statement.
func sendBuffers(t *testing.T, s *Store) map[*byte]int {
	t.Helper()
	ctx := context.Background()
	bufs := map[*byte]int{}
	for range s.pool.Stat().TotalConns() {
		c, err := s.pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
		if _, err := c.Exec(ctx, `SELECT 1`); err != nil {
			t.Fatalf("a statement after the batches: %v", err)
		}
		sb, ok := c.Conn().PgConn().CustomData()[sendBufferKey].(*sendBuffer)
		if !ok || cap(sb.buf) == 0 || cap(sb.buf) > maxSendBuffer {
			t.Fatalf("a connection's send buffer: %v (ok %v), want one of at most %d bytes", sb, ok, maxSendBuffer)
		}
		bufs[unsafe.SliceData(sb.buf)] = cap(sb.buf)
	}
	return bufs
}

func sumOf(ns []int) int {
	s := 0
	for _, n := range ns {
		s += n
	}
	return s
}
