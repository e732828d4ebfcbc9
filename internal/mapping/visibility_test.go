package mapping

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	dzsql "github.com/dzdesk/dzhook/deploy/sql"
	"github.com/dzdesk/dzhook/internal/filter"
	"github.com/dzdesk/dzhook/internal/pgtest"
)

// README's filters that keep internal notes out of a channel: the one it
// gave, and the one it gives now, which keeps out a note whose
// visibility dzhook could not read (null) too.
const (
	filterInternalTrue   = `!(event == "request.commented" && data.internal == true)`
	filterInternalNotOff = `!(event == "request.commented" && data.internal != false)`
)

// commentsWith streams the reference schema whose comments keep their
// visibility in column (added by alter), mapped through values, and
// returns the request.commented bodies of the bodies inserted, in order,
// with the mapper's JSON log.
func commentsWith(t *testing.T, alter, column string, values map[string]string, inserts ...string) ([][]byte, *logLines) {
	t.Helper()
	db := pgtest.NewDB(t)
	db.Exec(t, dzsql.Schema, alter)
	mc := DefaultConfig()
	mc.Comments.Columns.Internal = column
	mc.Comments.Values.Internal = values
	if ps := mc.Validate(); len(ps) != 0 {
		t.Fatalf("validate: %v", ps)
	}
	var logs logLines
	p := startPipelineWith(t, db, mc, func(c *MapperConfig) { c.Logger = slog.New(slog.NewJSONHandler(&logs, nil)) })
	db.Exec(t, append([]string{
		`INSERT INTO users (id, email) VALUES (1, 'a@x')`,
		`INSERT INTO requests (id, title, requester_id) VALUES (1, 't', 1)`,
	}, inserts...)...)
	events, _ := p.wait(t, 2+len(inserts), 0)
	var out [][]byte
	for _, e := range events {
		if e.Type == "request.commented" {
			out = append(out, e.Body)
		}
	}
	if len(out) != len(inserts) {
		t.Fatalf("%d request.commented, want %d", len(out), len(inserts))
	}
	return out, &logs
}

// internalOf returns data.internal as the body has it (JSON text).
func internalOf(t *testing.T, body []byte) string {
	t.Helper()
	var env struct {
		Data map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	return string(env.Data["internal"])
}

// sends reports whether a subscription with the filter expr sends body.
func sends(t *testing.T, expr string, body []byte) bool {
	t.Helper()
	prg, err := filter.Compile(expr)
	if err != nil {
		t.Fatal(err)
	}
	env, err := filter.Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := prg.Match(env)
	if err != nil {
		t.Fatalf("filter %s: %v", expr, err)
	}
	return ok
}

// checkVisibility asserts each body's data.internal, its schema, and that
// README's filters keep out every comment not known to be public.
func checkVisibility(t *testing.T, bodies [][]byte, want []string) {
	t.Helper()
	schemas := builtinSchemas(t)
	for i, body := range bodies {
		if got := internalOf(t, body); got != want[i] {
			t.Errorf("comment %d: internal = %s, want %s: %s", i+1, got, want[i], body)
		}
		if err := schemas.Validate(body); err != nil {
			t.Errorf("comment %d breaks its schema: %v", i+1, err)
		}
		if got := sends(t, filterInternalNotOff, body); got != (want[i] == "false") {
			t.Errorf("comment %d (internal %s): README's filter sends it: %v", i+1, want[i], got)
		}
		if want[i] == "true" && sends(t, filterInternalTrue, body) {
			t.Errorf("comment %d: an internal note passes !(… data.internal == true)", i+1)
		}
	}
}

// TestCommentVisibilityText: a visibility kept as text ('public' /
// 'internal'), translated by comments.values.internal, goes out as the
// boolean; it went out as "internal":"internal", against the schema, and
// README's filter let the internal note through to a chat channel.
func TestCommentVisibilityText(t *testing.T) {
	bodies, logs := commentsWith(t, `ALTER TABLE comments ADD COLUMN visibility text NOT NULL DEFAULT 'public'`, "visibility",
		map[string]string{"internal": "true", "public": "false"},
		`INSERT INTO comments (id, request_id, author_id, body, visibility) VALUES (1, 1, 1, 'secret internal note', 'internal')`,
		`INSERT INTO comments (id, request_id, author_id, body, visibility) VALUES (2, 1, 1, 'hello', 'public')`,
	)
	checkVisibility(t, bodies, []string{"true", "false"})
	if w := logs.find("WARN", nil); len(w) != 0 {
		t.Errorf("WARN for translated values: %v", w)
	}
}

// TestCommentVisibilityInverted: an inverted flag (is_public, as
// Zendesk's public), translated {"true": "false", "false": "true"}.
func TestCommentVisibilityInverted(t *testing.T) {
	bodies, _ := commentsWith(t, `ALTER TABLE comments ADD COLUMN is_public boolean NOT NULL DEFAULT true`, "is_public",
		map[string]string{"true": "false", "false": "true"},
		`INSERT INTO comments (id, request_id, author_id, body, is_public) VALUES (1, 1, 1, 'secret internal note', false)`,
		`INSERT INTO comments (id, request_id, author_id, body, is_public) VALUES (2, 1, 1, 'hello', true)`,
	)
	checkVisibility(t, bodies, []string{"true", "false"})
}

// TestCommentVisibilityUnknown: a value that reads as no boolean and has
// no translation goes out as null (it went out as text), with one WARN
// per value naming the column, the value and the key to add it to.
func TestCommentVisibilityUnknown(t *testing.T) {
	bodies, logs := commentsWith(t, `ALTER TABLE comments ADD COLUMN visibility text NOT NULL DEFAULT 'public'`, "visibility",
		map[string]string{"public": "false"},
		`INSERT INTO comments (id, request_id, author_id, body, visibility) VALUES (1, 1, 1, 'secret', 'internal')`,
		`INSERT INTO comments (id, request_id, author_id, body, visibility) VALUES (2, 1, 1, 'secret too', 'internal')`,
		`INSERT INTO comments (id, request_id, author_id, body, visibility) VALUES (3, 1, 1, 'hello', 'public')`,
		`INSERT INTO comments (id, request_id, author_id, body, visibility) VALUES (4, 1, 1, 'yes', 'Y')`,
		// A column mapped by mistake: its text is not logged.
		`INSERT INTO comments (id, request_id, author_id, body, visibility) VALUES (5, 1, 1, 'x', 'my card is 4111 1111 1111 1111')`,
	)
	checkVisibility(t, bodies, []string{"null", "null", "false", "true", "null"})
	if long := logs.find("WARN", map[string]string{"value": "(30 bytes, not shown)", "id": "5"}); len(long) != 1 || strings.Contains(logs.String(), "4111") {
		t.Errorf("WARN lines for a 30-byte value: %v, want one giving its length alone\n%s", long, logs.String())
	}
	w := logs.find("WARN", map[string]string{"table": "public.comments", "column": "visibility", "value": "internal", "id": "1"})
	if len(w) != 1 || !strings.Contains(w[0]["msg"].(string), "mapping.comments.values.internal") {
		t.Errorf("WARN lines for the untranslated value: %v, want one naming mapping.comments.values.internal\n%s", w, logs.String())
	}
	if all := logs.find("WARN", nil); len(all) != 2 {
		t.Errorf("%d WARN lines, want 2 (said once per value)\n%s", len(all), logs.String())
	}
}

// TestValidateCommentValues: a comments.values.internal translation to
// other than a boolean, or to nothing, is refused at its path.
func TestValidateCommentValues(t *testing.T) {
	mc := DefaultConfig()
	mc.Comments.Values.Internal = map[string]string{"internal": "internal", "public": "false", "draft": " "}
	var got []string
	for _, p := range mc.Validate() {
		got = append(got, p.Error())
	}
	want := []string{
		`mapping.comments.values.internal.draft: translates to nothing: give the value it stands for (quote it if YAML reads it otherwise)`,
		`mapping.comments.values.internal.internal: "internal" is not a boolean: translate to "true" or "false"`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
