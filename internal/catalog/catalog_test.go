package catalog

import (
	"reflect"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	c, err := New(Event{Name: "order.shipped"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		pattern string
		want    []string
	}{
		{"request.created", []string{"request.created"}},
		{"sla.*", []string{"sla.warning", "sla.breach"}},
		{"user.*ed", []string{"user.created", "user.updated", "user.deactivated"}},
		{"order.*", []string{"order.shipped"}},
		{"ticket.*", nil},
		{"request.creatd", nil},
	} {
		got, err := c.Match(tc.pattern)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Match(%q) = %v, %v; want %v", tc.pattern, got, err, tc.want)
		}
	}
	if all, _ := c.Match("*"); len(all) != 12 {
		t.Errorf("* matched %d events, want 12", len(all))
	}
	if _, err := c.Match("request.[a"); err == nil {
		t.Error("a malformed pattern matched without error")
	}
}

func TestCustomEvents(t *testing.T) {
	if len(Builtin()) != 11 {
		t.Fatalf("%d built-in events, want the documentation's 11", len(Builtin()))
	}
	for _, tc := range []struct {
		name, want string
	}{
		{"Shipped", "must look like entity.action"},
		{"order.shipped.now", "must look like entity.action"},
		{"request.created", "is a built-in DZDESK event"},
	} {
		if _, err := New(Event{Name: tc.name}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%q) = %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := New(Event{Name: "a.b"}, Event{Name: "a.b"}); err == nil || !strings.Contains(err.Error(), "declared twice") {
		t.Errorf("a duplicate custom event: %v", err)
	}
	c, _ := New(Event{Name: "invoice.payment_failed"})
	if e, ok := c.Lookup("invoice.payment_failed"); !ok || !e.Custom || e.Group != "invoice" || e.Description == "" {
		t.Errorf("custom event = %+v, %v", e, ok)
	}
}
