package transform

import (
	"runtime"
	"strings"
	"testing"
)

// TestCELFormatMemoryBounded: 1,000 copies of a 1 MiB text kept in a list
// for a few thousand cost units: about 1 GB allocated by one transform
// evaluation (10,000 copies with one more level: the 1 s budget is what
// stopped it, after several GB, before format was charged so).
func TestCELFormatMemoryBounded(t *testing.T) {
	big := `{"s": "` + strings.Repeat("a", 1<<20) + `"}`
	tr, err := New(`{"n": [0,1,2,3,4,5,6,7,8,9].map(a, [0,1,2,3,4,5,6,7,8,9].map(b, [0,1,2,3,4,5,6,7,8,9].map(c, "%s".format([data.s])))).size()}`, "")
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = tr.Apply(envelope("e", big))
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 100<<20 {
		t.Errorf("one transform allocated %d MiB (err %v); want it stopped at the cost budget first", alloc>>20, err)
	}
}
