package config

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestRestartSections: each section changed alone is reported by its
// YAML key; a change of subscriptions, which a reload applies, is not;
// several changes come sorted.
func TestRestartSections(t *testing.T) {
	parse := func(t *testing.T, yaml string) *Config {
		t.Helper()
		cfg, err := Parse([]byte(yaml), nil)
		if err != nil {
			t.Fatalf("%v\n%s", err, yaml)
		}
		return cfg
	}
	cur := parse(t, minimal)
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{"nothing", minimal, nil},
		{"subscriptions only", strings.Replace(minimal, "request.*", "request.created", 1), nil},
		{"source", strings.Replace(minimal, "127.0.0.1", "127.0.0.2", 1), []string{"source"}},
		{"journal", minimal + "journal:\n  retention: 24h\n", []string{"journal"}},
		{"delivery", minimal + "delivery:\n  retry_schedule: [0s, 1m]\n", []string{"delivery"}},
		{"admin", minimal + "admin:\n  listen: 127.0.0.1:9090\n", []string{"admin"}},
		{"notify secret", minimal + "notify:\n  url: https://hooks.example.com/x\n  secret: 0123456789abcdef\n", []string{"notify"}},
		{"sla", minimal + "sla:\n  warning_percent: [50, 90]\n", []string{"sla"}},
		{"outbox", minimal + "outbox:\n  message_prefix: other\n", []string{"outbox"}},
		{"mapping", minimal + "mapping:\n  requests:\n    id_prefix: ticket_\n", []string{"mapping"}},
		{"log", minimal + "log:\n  level: debug\n", []string{"log"}},
		{"custom_events", minimal + "custom_events:\n  - name: order.shipped\n", []string{"custom_events"}},
		{"several, sorted", minimal + "sla:\n  warning_percent: [50]\nadmin:\n  listen: 127.0.0.1:9090\njournal:\n  schema: other\n", []string{"admin", "journal", "sla"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := RestartSections(cur, parse(t, tc.yaml)); !slices.Equal(got, tc.want) {
				t.Errorf("RestartSections = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRestartSectionsCoversConfig: every top-level section of Config but
// subscriptions is compared, so a section added to Config cannot be
// forgotten by reload's report.
func TestRestartSectionsCoversConfig(t *testing.T) {
	full, err := Parse([]byte(minimal+"notify:\n  url: https://hooks.example.com/x\ncustom_events:\n  - name: order.shipped\nsecrets:\n  key: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\ntelemetry:\n  otlp_endpoint: http://collector:4318\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		if key := typ.Field(i).Tag.Get("koanf"); key != "subscriptions" {
			want = append(want, key)
		}
	}
	slices.Sort(want)
	if got := RestartSections(&Config{}, full); !slices.Equal(got, want) {
		t.Errorf("sections compared %v, want every section but subscriptions: %v", got, want)
	}
}
