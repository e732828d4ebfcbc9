package filter

import (
	"strings"
	"testing"
)

// TestFilterStringFunctions: a filter may use the strings extension
// (lowerAscii, trim, split, replace, …), which was undeclared.
func TestFilterStringFunctions(t *testing.T) {
	env, err := Parse([]byte(`{"id":"whk_1","event":"request.created","timestamp":"t","data":{"title":"  Printer OUTAGE, floor 3 ","tags":"a,b,vip"}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, expr := range []string{
		`data.title.lowerAscii().contains("outage")`,
		`data.title.trim().startsWith("Printer")`,
		`"vip" in data.tags.split(",")`,
		`data.title.replace(" ", "").size() == 20`,
	} {
		p, err := Compile(expr)
		if err != nil {
			t.Fatalf("Compile(%s): %v", expr, err)
		}
		if ok, err := p.Match(env); !ok || err != nil {
			t.Errorf("%s: %v, %v; want a match", expr, ok, err)
		}
	}
}

// TestFilterStringFunctionsWithinCostLimit: the strings extension is
// charged by the length of the text (its version 5), so a filter that
// rewrites a 1 MiB text over and over stops at the cost limit rather
// than holding the stream until its deadline (without cost models each
// call cost one unit).
func TestFilterStringFunctionsWithinCostLimit(t *testing.T) {
	env, err := Parse([]byte(`{"id":"whk_1","event":"e","timestamp":"t","data":{"s":"` + strings.Repeat("a<", 1<<19) + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, expr := range []string{
		`[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20].all(i, data.s.replace("<", "&lt;").size() > 0)`,
		`[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20].all(i, data.s.upperAscii().size() > 0)`,
		`[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20].all(i, "%s".format([data.s]).size() > 0)`,
	} {
		p, err := Compile(expr)
		if err != nil {
			t.Fatalf("Compile(%s): %v", expr, err)
		}
		if ok, err := p.Match(env); ok || err == nil || !strings.Contains(err.Error(), "cost limit") {
			t.Errorf("%s: %v, %v; want stopped at the cost limit", expr, ok, err)
		}
	}
}
