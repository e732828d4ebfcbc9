package mapping

import (
	"time"

	"github.com/dzdesk/dzhook/internal/catalog"
)

// Prefixes are the id prefixes of a mapping's requests, users and
// comments (mapping.*.id_prefix).
type Prefixes struct{ Request, User, Comment string }

// ReferencePrefixes are DZDESK's: req_, usr_, cmt_.
var ReferencePrefixes = Prefixes{Request: "req_", User: "usr_", Comment: "cmt_"}

// Prefixes returns the mapping's id prefixes.
func (c *Config) Prefixes() Prefixes {
	return Prefixes{Request: c.Requests.IDPrefix, User: c.Users.IDPrefix, Comment: c.Comments.IDPrefix}
}

// Sample returns an envelope for a test delivery of eventType: the payload
// shapes of DZDESK's documentation with sample values (custom events get
// {"sample": true}), ids with DZDESK's prefixes. id is the event id; ts
// its timestamp.
func Sample(eventType, id string, ts time.Time) []byte {
	return SampleWith(eventType, id, ts, ReferencePrefixes)
}

// SampleWith is Sample with the ids a mapping's prefixes give (a
// receiver that checks them refused the test, whose ids were DZDESK's
// whatever the mapping said).
func SampleWith(eventType, id string, ts time.Time, p Prefixes) []byte {
	ts = ts.UTC().Truncate(time.Second)
	created := ts.Add(-30 * time.Minute)
	person := func(o *obj, key, id, email string) {
		o.key(key)
		p := beginObj(o.b)
		p.str("id", id)
		p.str("email", email)
		o.b = p.end()
	}
	request := func(o *obj, status string, assigned bool) {
		o.str("id", p.Request+"123")
		o.str("title", "Cannot access email")
		o.str("status", status)
		o.str("priority", "high")
		person(o, "requester", p.User+"123", "john@company.com")
		if assigned {
			person(o, "assignedTo", p.User+"456", "jane@company.com")
		} else {
			o.null("assignedTo")
		}
		o.key("createdAt")
		o.b = appendTime(o.b, created)
		o.key("updatedAt")
		o.b = appendTime(o.b, ts)
	}
	user := func(o *obj, active bool) {
		o.str("id", p.User+"123")
		o.str("email", "john@company.com")
		o.str("name", "John Smith")
		o.str("role", "requester")
		o.key("active")
		if active {
			o.b = append(o.b, "true"...)
		} else {
			o.b = append(o.b, "false"...)
		}
		o.key("createdAt")
		o.b = appendTime(o.b, created)
	}
	o := beginObj(nil)
	switch eventType {
	case catalog.RequestCreated:
		request(&o, "open", false)
	case catalog.RequestUpdated:
		request(&o, "in_progress", true)
	case catalog.RequestStatusChanged:
		o.str("id", p.Request+"123")
		o.str("previousStatus", "open")
		o.str("newStatus", "in_progress")
		person(&o, "changedBy", p.User+"456", "jane@company.com")
	case catalog.RequestAssigned:
		request(&o, "open", true)
		o.null("previousAssignedTo")
		person(&o, "changedBy", p.User+"456", "jane@company.com")
	case catalog.RequestCommented:
		o.str("id", p.Comment+"789")
		o.str("requestId", p.Request+"123")
		person(&o, "author", p.User+"456", "jane@company.com")
		o.str("body", "Looking into it.")
		o.key("internal")
		o.b = append(o.b, "false"...)
		o.key("createdAt")
		o.b = appendTime(o.b, ts)
	case catalog.RequestDeleted:
		request(&o, "closed", true)
	case catalog.SLAWarning:
		o.str("requestId", p.Request+"123")
		o.str("slaType", "resolution")
		o.key("targetTime")
		o.b = appendTime(o.b, ts.Add(150*time.Minute))
		o.key("percentElapsed")
		o.b = append(o.b, "75"...)
		o.str("timeRemaining", "2h 30m")
	case catalog.SLABreach:
		o.str("requestId", p.Request+"123")
		o.str("slaType", "resolution")
		o.key("targetTime")
		o.b = appendTime(o.b, ts)
		o.key("breachedAt")
		o.b = appendTime(o.b, ts)
	case catalog.UserCreated, catalog.UserUpdated:
		user(&o, true)
	case catalog.UserDeactivated:
		user(&o, false)
	default:
		o.key("sample")
		o.b = append(o.b, "true"...)
	}
	return envelope(nil, id, eventType, ts, o.end())
}

// SampleData is the envelope of a test delivery of a custom event whose
// data is given (its declaration's example).
func SampleData(eventType, id string, ts time.Time, data []byte) []byte {
	return envelope(nil, id, eventType, ts.UTC().Truncate(time.Second), data)
}
