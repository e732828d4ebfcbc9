package mapping

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Config maps DZDESK's entities onto tables and columns (the `mapping:`
// section). Its defaults are the reference schema (deploy/sql), so an empty
// mapping works with it; another schema is described here, in YAML, without
// code. A column left empty ("") is not mapped: its field is left out of
// payloads, or the event that needs it does not fire.
type Config struct {
	// Schema qualifies table names written without one, outbox.table
	// included. Defaults to "public".
	Schema string `koanf:"schema"`
	// Requests are DZDESK's requests (tickets).
	Requests Requests `koanf:"requests"`
	// Users are requesters and agents.
	Users Users `koanf:"users"`
	// Comments are a request's comments.
	Comments Comments `koanf:"comments"`
	// SLAs are a request's SLA clocks.
	SLAs SLAs `koanf:"request_slas"`
}

// Requests maps the request entity.
type Requests struct {
	// Table holding requests. Defaults to "requests".
	Table string `koanf:"table"`
	// IDPrefix starts request ids in payloads. Defaults to "req_".
	IDPrefix string         `koanf:"id_prefix"`
	Columns  RequestColumns `koanf:"columns"`
	// Values translate stored values into DZDESK's, per field, e.g.
	// status: {"1": open, "2": in_progress}. Unlisted values pass as
	// they are. Defaults to none.
	Values RequestValues `koanf:"values"`
}

// RequestColumns names the column of each request field.
type RequestColumns struct {
	ID         string `koanf:"id"`          // Defaults to "id". Required.
	Title      string `koanf:"title"`       // Defaults to "title".
	Status     string `koanf:"status"`      // Defaults to "status". Required.
	Priority   string `koanf:"priority"`    // Defaults to "priority".
	Requester  string `koanf:"requester"`   // user id; defaults to "requester_id".
	AssignedTo string `koanf:"assigned_to"` // user id; defaults to "assigned_to_id".
	UpdatedBy  string `koanf:"updated_by"`  // user id, for changedBy; defaults to "updated_by_id".
	CreatedAt  string `koanf:"created_at"`  // Defaults to "created_at".
	UpdatedAt  string `koanf:"updated_at"`  // Defaults to "updated_at".
}

// RequestValues translate stored request values.
type RequestValues struct {
	Status   map[string]string `koanf:"status"`
	Priority map[string]string `koanf:"priority"`
}

// Users maps the user entity.
type Users struct {
	// Table holding users. Defaults to "users".
	Table string `koanf:"table"`
	// IDPrefix starts user ids. Defaults to "usr_".
	IDPrefix string      `koanf:"id_prefix"`
	Columns  UserColumns `koanf:"columns"`
	Values   UserValues  `koanf:"values"`
}

// UserColumns names the column of each user field.
type UserColumns struct {
	ID        string `koanf:"id"`         // Defaults to "id". Required.
	Email     string `koanf:"email"`      // Defaults to "email". Required.
	Name      string `koanf:"name"`       // Defaults to "name".
	Role      string `koanf:"role"`       // Defaults to "role".
	Active    string `koanf:"active"`     // boolean; defaults to "active".
	CreatedAt string `koanf:"created_at"` // Defaults to "created_at".
	UpdatedAt string `koanf:"updated_at"` // Defaults to "updated_at".
}

// UserValues translate stored user values. Active maps stored values to
// "true" or "false", for schemas that keep a status text instead of a
// boolean (e.g. {enabled: "true", disabled: "false"}).
type UserValues struct {
	Role   map[string]string `koanf:"role"`
	Active map[string]string `koanf:"active"`
}

// Comments maps the comment entity.
type Comments struct {
	// Table holding comments. Defaults to "comments".
	Table string `koanf:"table"`
	// IDPrefix starts comment ids. Defaults to "cmt_".
	IDPrefix string         `koanf:"id_prefix"`
	Columns  CommentColumns `koanf:"columns"`
	// Values translate stored comment values. Defaults to none.
	Values CommentValues `koanf:"values"`
}

// CommentValues translate stored comment values. Internal maps stored
// values to "true" (an internal note) or "false" (public), for schemas
// that keep visibility as text or an enum ({internal: "true", public:
// "false"}) or as an inverted flag (is_public: {"true": "false",
// "false": "true"}); without it, a value that reads as no boolean was
// sent as text, and a filter on data.internal == true let internal notes
// through.
type CommentValues struct {
	Internal map[string]string `koanf:"internal"`
}

// CommentColumns names the column of each comment field.
type CommentColumns struct {
	ID        string `koanf:"id"`         // Defaults to "id". Required.
	Request   string `koanf:"request"`    // request id; defaults to "request_id". Required.
	Author    string `koanf:"author"`     // user id; defaults to "author_id".
	Body      string `koanf:"body"`       // Defaults to "body".
	Internal  string `koanf:"internal"`   // boolean; defaults to "internal".
	CreatedAt string `koanf:"created_at"` // Defaults to "created_at".
}

// SLAs maps the SLA entity that drives sla.warning and sla.breach.
type SLAs struct {
	// Table holding SLAs. Defaults to "request_slas".
	Table   string     `koanf:"table"`
	Columns SLAColumns `koanf:"columns"`
	// Values translate stored SLA types into DZDESK's (response,
	// resolution). Defaults to none.
	Values SLAValues `koanf:"values"`
}

// SLAColumns names the column of each SLA field.
type SLAColumns struct {
	ID          string `koanf:"id"`           // Defaults to "id". Required.
	Request     string `koanf:"request"`      // request id; defaults to "request_id". Required.
	SLAType     string `koanf:"sla_type"`     // Defaults to "sla_type".
	StartedAt   string `koanf:"started_at"`   // Defaults to "started_at". Required.
	TargetAt    string `koanf:"target_at"`    // Defaults to "target_at". Required.
	CompletedAt string `koanf:"completed_at"` // null while open; defaults to "completed_at". Required.
}

// SLAValues translate stored SLA values.
type SLAValues struct {
	SLAType map[string]string `koanf:"sla_type"`
}

// DefaultConfig is the mapping of the reference schema.
func DefaultConfig() Config {
	return Config{
		Schema: "public",
		Requests: Requests{Table: "requests", IDPrefix: "req_", Columns: RequestColumns{
			ID: "id", Title: "title", Status: "status", Priority: "priority", Requester: "requester_id",
			AssignedTo: "assigned_to_id", UpdatedBy: "updated_by_id", CreatedAt: "created_at", UpdatedAt: "updated_at"}},
		Users: Users{Table: "users", IDPrefix: "usr_", Columns: UserColumns{
			ID: "id", Email: "email", Name: "name", Role: "role", Active: "active", CreatedAt: "created_at", UpdatedAt: "updated_at"}},
		Comments: Comments{Table: "comments", IDPrefix: "cmt_", Columns: CommentColumns{
			ID: "id", Request: "request_id", Author: "author_id", Body: "body", Internal: "internal", CreatedAt: "created_at"}},
		SLAs: SLAs{Table: "request_slas", Columns: SLAColumns{
			ID: "id", Request: "request_id", SLAType: "sla_type", StartedAt: "started_at", TargetAt: "target_at", CompletedAt: "completed_at"}},
	}
}

// identifier is a plain PostgreSQL identifier, for schemas and tables:
// their names are written "schema.table" throughout (Qualify, the
// relations the stream names), so they stay plain.
var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)

// maxName is the longest name PostgreSQL keeps, NAMEDATALEN - 1 bytes: a
// longer one is truncated, so it would never be found in the catalog.
const maxName = 63

// columnProblem says what makes name unusable as a column name, or "".
// Any name PostgreSQL can store is taken as it is stored, case and all:
// "état" (unquoted) or "Ticket No" (quoted at CREATE). Every query that
// names a mapped column quotes it (pgx.Identifier), and the catalog and
// the stream's relations are compared with it exactly.
func columnProblem(name string) string {
	switch {
	case len(name) > maxName:
		return fmt.Sprintf("%q is %d bytes long: PostgreSQL keeps at most %d of a name (it truncates a longer one)", name, len(name), maxName)
	case strings.ContainsRune(name, 0):
		return fmt.Sprintf("%q contains a NUL character, which no PostgreSQL name can", name)
	case !utf8.ValidString(name):
		return fmt.Sprintf("%q is not valid UTF-8", name)
	}
	return ""
}

// column is one mapped column, with the YAML path it was configured at.
// time: the payload shows it as an RFC 3339 time (or the SLA clock
// computes with it), so it must be a timestamp type (see CheckTypes).
type column struct {
	path, name     string
	required, time bool
}

// entityColumns lists an entity's table and mapped columns with their
// paths, for validation and the catalog check.
func (c *Config) entities() []entity {
	r, u, cm, s := c.Requests.Columns, c.Users.Columns, c.Comments.Columns, c.SLAs.Columns
	const req, opt, ts = true, false, true
	return []entity{
		{"requests", c.Requests.Table, []column{
			{"id", r.ID, req, false}, {"title", r.Title, opt, false}, {"status", r.Status, req, false}, {"priority", r.Priority, opt, false},
			{"requester", r.Requester, opt, false}, {"assigned_to", r.AssignedTo, opt, false}, {"updated_by", r.UpdatedBy, opt, false},
			{"created_at", r.CreatedAt, opt, ts}, {"updated_at", r.UpdatedAt, opt, ts}}},
		{"users", c.Users.Table, []column{
			{"id", u.ID, req, false}, {"email", u.Email, req, false}, {"name", u.Name, opt, false}, {"role", u.Role, opt, false},
			{"active", u.Active, opt, false}, {"created_at", u.CreatedAt, opt, ts}, {"updated_at", u.UpdatedAt, opt, ts}}},
		{"comments", c.Comments.Table, []column{
			{"id", cm.ID, req, false}, {"request", cm.Request, req, false}, {"author", cm.Author, opt, false}, {"body", cm.Body, opt, false},
			{"internal", cm.Internal, opt, false}, {"created_at", cm.CreatedAt, opt, ts}}},
		{"request_slas", c.SLAs.Table, []column{
			{"id", s.ID, req, false}, {"request", s.Request, req, false}, {"sla_type", s.SLAType, opt, false},
			{"started_at", s.StartedAt, req, ts}, {"target_at", s.TargetAt, req, ts}, {"completed_at", s.CompletedAt, req, false}}},
	}
}

type entity struct {
	key, table string
	columns    []column
}

// Qualify returns schema.table for a configured table name.
func (c *Config) Qualify(table string) string {
	if strings.Contains(table, ".") {
		return table
	}
	return c.Schema + "." + table
}

// Problem is a mapping mistake at a YAML path below mapping.
type Problem struct{ Path, Message string }

func (p Problem) Error() string { return p.Path + ": " + p.Message }

// Validate reports the mistakes that need no database: schemas and
// tables that are not plain identifiers, column names PostgreSQL cannot
// hold, required columns left empty, prefixes with spaces,
// one table mapped to two entities.
func (c *Config) Validate() []Problem {
	var ps []Problem
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{Path: "mapping." + path, Message: fmt.Sprintf(format, args...)})
	}
	if !identifier.MatchString(c.Schema) {
		add("schema", "%q is not a plain PostgreSQL identifier", c.Schema)
	}
	tables := map[string]string{}
	for _, e := range c.entities() {
		parts := strings.Split(e.table, ".")
		valid := len(parts) <= 2
		for _, p := range parts {
			valid = valid && identifier.MatchString(p)
		}
		if !valid {
			add(e.key+".table", "%q is not a table name (table or schema.table, plain identifiers)", e.table)
		} else if other, dup := tables[c.Qualify(e.table)]; dup {
			add(e.key+".table", "%s is already mapped as %s", c.Qualify(e.table), other)
		} else {
			tables[c.Qualify(e.table)] = e.key
		}
		for _, col := range e.columns {
			p := e.key + ".columns." + col.path
			switch {
			case col.name == "" && col.required:
				add(p, "required: the %s entity cannot work without it", e.key)
			case col.name != "":
				if msg := columnProblem(col.name); msg != "" {
					add(p, "%s", msg)
				}
			}
		}
	}
	// A translation to nothing ("WORKING:" left empty, or ~) would send
	// "status": "" for a value DZDESK documents as one of a few.
	for _, v := range []struct {
		path string
		m    map[string]string
	}{
		{"requests.values.status", c.Requests.Values.Status}, {"requests.values.priority", c.Requests.Values.Priority},
		{"users.values.role", c.Users.Values.Role}, {"users.values.active", c.Users.Values.Active},
		{"comments.values.internal", c.Comments.Values.Internal}, {"request_slas.values.sla_type", c.SLAs.Values.SLAType},
	} {
		keys := make([]string, 0, len(v.m))
		for k := range v.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if strings.TrimSpace(v.m[k]) == "" {
				add(v.path+"."+k, "translates to nothing: give the value it stands for (quote it if YAML reads it otherwise)")
			}
		}
	}
	// users.values.active and comments.values.internal are read as
	// booleans: a translation to anything else (enabled: active) gave
	// "active": null in every payload, and user.deactivated never fired.
	for _, v := range []struct {
		path string
		m    map[string]string
	}{{"users.values.active", c.Users.Values.Active}, {"comments.values.internal", c.Comments.Values.Internal}} {
		for _, k := range slices.Sorted(maps.Keys(v.m)) {
			if _, ok := parseActive(v.m[k]); !ok && strings.TrimSpace(v.m[k]) != "" {
				add(v.path+"."+k, "%q is not a boolean: translate to \"true\" or \"false\"", v.m[k])
			}
		}
	}
	for _, p := range []struct{ key, prefix string }{{"requests", c.Requests.IDPrefix}, {"users", c.Users.IDPrefix}, {"comments", c.Comments.IDPrefix}} {
		switch {
		case strings.ContainsAny(p.prefix, " \t\r\n\"\\"):
			add(p.key+".id_prefix", "%q must not contain spaces, quotes or backslashes", p.prefix)
		case strings.ContainsFunc(p.prefix, unicode.IsControl):
			add(p.key+".id_prefix", "%q must not contain control characters", p.prefix)
		case len(p.prefix) > 32:
			add(p.key+".id_prefix", "is %d bytes long: at most 32", len(p.prefix))
		}
	}
	return ps
}
