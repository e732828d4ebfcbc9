//go:build linux

package rawsock

import (
	"testing"
	"time"
)

// TestBell: a ring before a wait makes it return at once, rings coalesce,
// a wait lasts until a ring from another goroutine, and Close ends a wait.
func TestBell(t *testing.T) {
	b := NewBell()
	if b == nil {
		t.Fatal("NewBell: no eventfd")
	}
	waited := func(what string) {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- b.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: Wait: %v", what, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: Wait did not return", what)
		}
	}
	if err := b.Ring(); err != nil {
		t.Fatal(err)
	}
	waited("rung before")
	for range 3 {
		if err := b.Ring(); err != nil {
			t.Fatal(err)
		}
	}
	waited("rung three times")
	// The three rings were one: the next wait waits.
	done := make(chan error, 1)
	go func() { done <- b.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v with no ring since the last", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := b.Ring(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a ring did not end a wait")
	}
	go func() { done <- b.Wait() }()
	time.Sleep(20 * time.Millisecond) // let it wait (either way, Close must end it)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Wait on a closed bell returned nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a wait")
	}
}
