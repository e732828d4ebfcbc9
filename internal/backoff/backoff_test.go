package backoff

import (
	"context"
	"testing"
	"time"
)

func TestNextDoublesWithJitterUpToTheCap(t *testing.T) {
	b := New(100*time.Millisecond, time.Second)
	for i, nominal := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		nominal *= time.Millisecond
		if got := b.Current(); got != nominal {
			t.Fatalf("step %d: Current() = %v, want %v", i, got, nominal)
		}
		d := b.Next()
		if d < nominal/2 || d > nominal {
			t.Fatalf("step %d: Next() = %v, want within [%v, %v]", i, d, nominal/2, nominal)
		}
	}
	b.Reset()
	if got := b.Current(); got != 100*time.Millisecond {
		t.Fatalf("after Reset, Current() = %v, want 100ms", got)
	}
}

func TestWaitEndsWithTheContext(t *testing.T) {
	b := New(time.Hour, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Wait(ctx); err != context.Canceled {
		t.Fatalf("Wait on a cancelled context = %v, want context.Canceled", err)
	}
}
