// Package catalog is the one list of DZDESK webhook events: their names, the
// group they belong to and what fires them, as DZDESK's public webhook
// documentation lists them. Configuration validation, mapping and the
// dashboard all read it from here, so a new event is added in one place.
package catalog

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
)

// Event is one entry of the catalog.
type Event struct {
	// Name is the event type as it appears in the envelope's "event" field
	// and the X-DZDESK-Event header, e.g. "request.created".
	Name string `json:"name"`
	// Group is the part before the dot: "request", "sla", "user", or the
	// entity of a custom event.
	Group string `json:"group"`
	// Description says what fires the event, in the documentation's words.
	Description string `json:"description"`
	// Custom is true for events declared in the configuration (outbox and
	// logical decoding messages) rather than built into DZDESK.
	Custom bool `json:"custom,omitempty"`
}

// The built-in event names. Code refers to these constants rather than to
// string literals so a typo is a compile error.
const (
	RequestCreated       = "request.created"
	RequestUpdated       = "request.updated"
	RequestStatusChanged = "request.status_changed"
	RequestAssigned      = "request.assigned"
	RequestCommented     = "request.commented"
	RequestDeleted       = "request.deleted"
	SLAWarning           = "sla.warning"
	SLABreach            = "sla.breach"
	UserCreated          = "user.created"
	UserUpdated          = "user.updated"
	UserDeactivated      = "user.deactivated"
)

// builtin is the documentation's table, in its order.
var builtin = [...]Event{
	{Name: RequestCreated, Group: "request", Description: "New request created"},
	{Name: RequestUpdated, Group: "request", Description: "Request modified"},
	{Name: RequestStatusChanged, Group: "request", Description: "Status change"},
	{Name: RequestAssigned, Group: "request", Description: "Assignment change"},
	{Name: RequestCommented, Group: "request", Description: "Comment added"},
	{Name: RequestDeleted, Group: "request", Description: "Request deleted"},
	{Name: SLAWarning, Group: "sla", Description: "SLA at risk"},
	{Name: SLABreach, Group: "sla", Description: "SLA breached"},
	{Name: UserCreated, Group: "user", Description: "User provisioned"},
	{Name: UserUpdated, Group: "user", Description: "User modified"},
	{Name: UserDeactivated, Group: "user", Description: "User deactivated"},
}

// Builtin returns the eleven DZDESK events in the documentation's order.
// The slice is a copy; callers may keep or change it.
func Builtin() []Event { return slices.Clone(builtin[:]) }

// IsBuiltin reports whether name is one of the eleven DZDESK events.
func IsBuiltin(name string) bool {
	for _, e := range builtin {
		if e.Name == name {
			return true
		}
	}
	return false
}

// customName is the shape a custom event name must have: entity.action in
// lower snake case, e.g. "order.shipped" or "invoice.payment_failed".
var customName = regexp.MustCompile(`^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$`)

// Catalog is the set of events a running configuration knows: the built-in
// ones plus the custom events it declares. The zero value is not useful; use
// New.
type Catalog struct {
	events []Event
	index  map[string]int
}

// New returns a catalog of the built-in events and the given custom event
// names. A custom name must look like entity.action and must not shadow a
// built-in event; the error names the offending value.
func New(custom ...Event) (*Catalog, error) {
	c := &Catalog{events: Builtin(), index: make(map[string]int)}
	for i, e := range c.events {
		c.index[e.Name] = i
	}
	var errs []string
	for _, e := range custom {
		switch {
		case !customName.MatchString(e.Name):
			errs = append(errs, fmt.Sprintf("%q: a custom event name must look like entity.action (lowercase letters, digits, _)", e.Name))
			continue
		case c.Has(e.Name):
			if c.events[c.index[e.Name]].Custom {
				errs = append(errs, fmt.Sprintf("%q: declared twice", e.Name))
			} else {
				errs = append(errs, fmt.Sprintf("%q: is a built-in DZDESK event, not a custom one", e.Name))
			}
			continue
		}
		e.Custom = true
		e.Group, _, _ = strings.Cut(e.Name, ".")
		if e.Description == "" {
			e.Description = "Custom event"
		}
		c.index[e.Name] = len(c.events)
		c.events = append(c.events, e)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("custom events: %s", strings.Join(errs, "; "))
	}
	return c, nil
}

// Events returns every event of the catalog, built-in ones first.
func (c *Catalog) Events() []Event { return slices.Clone(c.events) }

// Has reports whether name is an event of the catalog.
func (c *Catalog) Has(name string) bool {
	_, ok := c.index[name]
	return ok
}

// Lookup returns the catalog entry for name.
func (c *Catalog) Lookup(name string) (Event, bool) {
	i, ok := c.index[name]
	if !ok {
		return Event{}, false
	}
	return c.events[i], true
}

// IsPattern reports whether p is a glob ("request.*", "*") rather than an
// exact event name.
func IsPattern(p string) bool { return strings.ContainsAny(p, "*?[") }

// Match returns the names of the events that p selects, in catalog order: p
// itself when it is an exact name of the catalog, every event whose name
// matches when p is a glob (path.Match syntax: "request.*", "*",
// "user.*ed"), and nothing when p selects no event. A malformed glob is an
// error.
func (c *Catalog) Match(p string) ([]string, error) {
	if !IsPattern(p) {
		if c.Has(p) {
			return []string{p}, nil
		}
		return nil, nil
	}
	if _, err := path.Match(p, ""); err != nil {
		return nil, fmt.Errorf("malformed pattern %q: %w", p, err)
	}
	var out []string
	for _, e := range c.events {
		if ok, _ := path.Match(p, e.Name); ok {
			out = append(out, e.Name)
		}
	}
	return out, nil
}
