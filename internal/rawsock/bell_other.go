//go:build !linux

package rawsock

// Bell is the Linux eventfd's (bell_linux.go); elsewhere NewBell returns
// nil and callers wait the standard way.
type Bell struct{}

// NewBell returns nil: no bell on this system.
func NewBell() *Bell { return nil }

// Ring, Wait and Close are never called on a nil Bell.
func (b *Bell) Ring() error  { return nil }
func (b *Bell) Wait() error  { return nil }
func (b *Bell) Close() error { return nil }
