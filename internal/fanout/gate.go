package fanout

import (
	"context"
	"sync"
)

// gate counts operations in progress (dispatches) so that another one
// (Resume) can wait for those that started before it, without anybody
// holding a lock across a wait: each operation takes a ticket when it
// starts and returns it when it ends, and wait blocks until every ticket
// older than its own is returned.
type gate struct {
	mu      sync.Mutex
	next    uint64
	open    []uint64      // tickets in progress, oldest first
	changed chan struct{} // closed when a ticket is returned; nil: nobody waits
}

// enter takes a ticket.
func (g *gate) enter() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.next++
	g.open = append(g.open, g.next)
	return g.next
}

// leave returns a ticket.
func (g *gate) leave(t uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, o := range g.open {
		if o == t {
			g.open = append(g.open[:i], g.open[i+1:]...)
			break
		}
	}
	if g.changed != nil {
		close(g.changed)
		g.changed = nil
	}
}

// wait returns once every operation that entered before it has left, or
// when ctx ends.
func (g *gate) wait(ctx context.Context) error { return g.waitFor(ctx, g.mark()) }

// mark is the newest ticket taken so far.
func (g *gate) mark() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.next
}

// waitFor returns once no ticket up to until is in progress, or when ctx
// ends.
func (g *gate) waitFor(ctx context.Context, until uint64) error {
	for {
		g.mu.Lock()
		if len(g.open) == 0 || g.open[0] > until {
			g.mu.Unlock()
			return nil
		}
		if g.changed == nil {
			g.changed = make(chan struct{})
		}
		ch := g.changed
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
