package mapping

import "testing"

func TestDuplicateKey(t *testing.T) {
	for in, want := range map[string]string{
		`{"a":1,"b":2}`:                                 "",
		`{"orderId":42,"orderId":"ord_1"}`:              "/orderId",
		`{"a":{"x":1,"y":2},"b":{"x":1,"x":2}}`:         "/b/x",
		`{"a":[{"x":1},{"x":2,"y":[1,{"z":1,"z":2}]}]}`: "/a/1/y/1/z",
		`{"a":[1,2,3],"a2":{"k":[],"k2":{}},"b":"a"}`:   "",
		`{"s":"a","t":["a","a"],"u":{"a":"a"}}`:         "",
		`{"a":{},"a":1}`:                                "/a",
	} {
		if got := duplicateKey([]byte(in)); got != want {
			t.Errorf("duplicateKey(%s) = %q, want %q", in, got, want)
		}
	}
}
