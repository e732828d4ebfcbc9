package cdc

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/dzdesk/dzhook/internal/pgtest"
)

// TestArrays: arrays as PostgreSQL streams them reach the handler with
// each element decoded as a scalar of its type is, nested by dimension,
// and every value marshals to JSON.
func TestArrays(t *testing.T) {
	db := pgtest.NewDB(t)
	db.Exec(t,
		`CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')`,
		`CREATE TABLE arr (id int PRIMARY KEY, uu uuid[], jb jsonb[], js json[], by bytea[], nums numeric[], fl float8[],
			md int[][], txt text[], ts timestamptz[], moods mood[], lb int[], empty int[], b box[])`,
	)
	runSetup(t, db, SetupConfig{Slot: "dzhook", Publication: "dzhook", Tables: []string{"public.arr"}})
	rec := newRecorder(true)
	startStream(t, db, rec)
	db.Exec(t, `INSERT INTO arr VALUES (1, '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}', ARRAY['{"a": 1}'::jsonb, 'null'::jsonb],
		ARRAY['{"keep":  "spacing"}'::json], ARRAY['\xdeadbeef'::bytea, ''::bytea], '{1.50,NaN,-Infinity}', '{2.5,NaN,Infinity}',
		'{{1,2},{3,NULL}}', ARRAY['a,b', 'NULL', NULL, 'q"uo\te', ' sp '], '{infinity,"2024-01-01 10:00:00+00"}', '{ok,happy}',
		'[0:1]={7,8}', '{}', '{(1,1),(0,0);(2,2),(1,1)}')`)
	changes, _ := rec.waitCommits(t, 1)
	c := changes[0]
	get := func(col string) any { return value(t, c, c.New, col) }
	checks := map[string]any{
		"uu":    []any{"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", nil},
		"jb":    []any{json.RawMessage(`{"a": 1}`), json.RawMessage(`null`)},
		"js":    []any{json.RawMessage(`{"keep":  "spacing"}`)},
		"by":    []any{`\xdeadbeef`, `\x`},
		"nums":  []any{"1.50", "NaN", "-Infinity"},
		"fl":    []any{2.5, "NaN", "Infinity"},
		"md":    []any{[]any{int64(1), int64(2)}, []any{int64(3), nil}},
		"txt":   []any{"a,b", "NULL", nil, `q"uo\te`, " sp "},
		"ts":    []any{"infinity", time.Date(2024, 1, 1, 10, 0, 0, 0, time.UTC)},
		"moods": []any{"ok", "happy"},
		"lb":    []any{int64(7), int64(8)},
		"empty": []any{},
		"b":     []any{"(1,1),(0,0)", "(2,2),(1,1)"},
	}
	for col, want := range checks {
		got := get(col)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", col, got, want)
		}
		if _, err := json.Marshal(got); err != nil {
			t.Errorf("%s: %v does not marshal to JSON: %v", col, got, err)
		}
	}
}

// TestParseArray covers the text format's corners PostgreSQL's output
// and input share.
func TestParseArray(t *testing.T) {
	str := func(src []byte) any { return string(src) }
	for _, tc := range []struct {
		in   string
		want any
	}{
		{`{}`, []any{}},
		{`{a,b}`, []any{"a", "b"}},
		{`{NULL,null,"NULL"}`, []any{nil, nil, "NULL"}},
		{`{"a\\b","c\"d"}`, []any{`a\b`, `c"d`}},
		{`{ a , b }`, []any{"a", "b"}},
		{`{{a},{b}}`, []any{[]any{"a"}, []any{"b"}}},
		{`[2:3]={x,y}`, []any{"x", "y"}},
		{`{a\,b}`, []any{"a,b"}},
		{`{a`, "{a"},
		{`{a}}`, "{a}}"},
		{`{"a}`, `{"a}`},
		{`{,}`, "{,}"},
		{`{{{{{{{1}}}}}}}`, "{{{{{{{1}}}}}}}"},
		{``, ""},
	} {
		got := arrayDecoder(str, ',')([]byte(tc.in))
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: got %#v, want %#v", tc.in, got, tc.want)
		}
	}
}

// FuzzParseArray: whatever the text, the array decoder never panics.
func FuzzParseArray(f *testing.F) {
	for _, s := range []string{`{}`, `{1,NULL,"a\"b"}`, `{{1,2},{3,4}}`, `[0:1]={a,b}`, `{(1,1),(0,0);(2,2),(1,1)}`} {
		f.Add([]byte(s))
	}
	dec := arrayDecoder(decodeString, ',')
	f.Fuzz(func(t *testing.T, b []byte) { _ = dec(b) })
}
