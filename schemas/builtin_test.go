package schemas

import "testing"

// TestBuiltinsCompile: every built-in document compiles (a Set compiles
// them when it first validates a body of their event).
func TestBuiltinsCompile(t *testing.T) {
	s, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := files.ReadDir(".")
	if err != nil || len(entries) == 0 || len(s.builtin) != len(entries) {
		t.Fatalf("%d built-in schemas of %d documents (err %v)", len(s.builtin), len(entries), err)
	}
	for name, b := range s.builtin {
		if sch, err := b.compiled(); err != nil || sch == nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
