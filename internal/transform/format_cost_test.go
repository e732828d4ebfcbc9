package transform

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestCELFormatChargedByWhatItMakes: cel-go v0.33.2's model charges
// string.format by its format string alone (common/cost/standard.go):
// "%s" with a 1 MiB text cost 1 unit, where replace, slackEscape and
// lowerAscii over the same text stop at the cost budget
// (TestCELStringFunctionsWithinCostLimit). filter.Strings charges what it
// makes (found by a review).
func TestCELFormatChargedByWhatItMakes(t *testing.T) {
	big := `{"s": "` + strings.Repeat("a<", 1<<19) + `"}`
	for _, expr := range []string{
		`{"n": [1,2,3,4,5,6,7,8,9,10].map(i, "%s".format([data.s]).size())}`,
	} {
		tr, err := New(expr, "")
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		start := time.Now()
		_, err = tr.Apply(envelope("e", big))
		if err == nil || !strings.Contains(err.Error(), "cost budget") {
			t.Errorf("%s: %v in %v; want over the cost budget", expr, err, time.Since(start))
		}
	}
}

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
