package main

import (
	"math"
	"testing"
)

func TestParseCPUStat(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	c0 := parseCPUStat("cpu  100 0 50 800 50 0 0 0 30 0\ncpu0 1 2 3 4 5\n")
	c1 := parseCPUStat("cpu  400 0 150 1400 50 0 0 0 90 0\n")
	if c0.total != 1000 || c0.idle != 850 {
		t.Fatalf("parsed %+v, want total 1000 (guest not counted twice), idle 850", c0)
	}
	idle, ok := c1.idleSince(c0)
	if !ok || math.Abs(idle-0.6) > 1e-9 {
		t.Fatalf("idle %v (%v), want 600 of 1,000 ticks", idle, ok)
	}
	if _, ok := c1.idleSince(parseCPUStat("intr 1 2 3")); ok {
		t.Error("a line that is not cpu's gave an idle share")
	}
}
