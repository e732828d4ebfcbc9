package mapping

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// duplicateKey returns the JSON pointer of the first member given twice
// in an object of b (valid JSON), or "". A data schema reads the last of
// two (Go's decoding), a receiver may read the first: {"orderId":42,
// "orderId":"ord_1"} passed a schema asking for a string, and a receiver
// keeping the first got 42.
func duplicateKey(b []byte) string {
	dec := json.NewDecoder(bytes.NewReader(b))
	type frame struct {
		path   string
		object bool
		seen   map[string]bool
		index  int
		key    string // an object's member whose value comes next
	}
	var stack []*frame
	child := func() string {
		if len(stack) == 0 {
			return ""
		}
		f := stack[len(stack)-1]
		if f.object {
			return f.path + "/" + f.key
		}
		f.index++
		return f.path + "/" + strconv.Itoa(f.index-1)
	}
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		top := func() *frame {
			if len(stack) == 0 {
				return nil
			}
			return stack[len(stack)-1]
		}()
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				stack = append(stack, &frame{path: child(), object: true, seen: map[string]bool{}})
				continue
			case '[':
				stack = append(stack, &frame{path: child()})
				continue
			default: // the end of top: its parent's member is done
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].object {
					stack[len(stack)-1].key = ""
				}
				continue
			}
		case string:
			if top != nil && top.object && top.key == "" {
				if top.seen[t] {
					return top.path + "/" + t
				}
				top.seen[t] = true
				top.key = t
				continue
			}
		}
		// A scalar value: an array's element, or an object's member's.
		if top != nil {
			if top.object {
				top.key = ""
			} else {
				top.index++
			}
		}
	}
}
