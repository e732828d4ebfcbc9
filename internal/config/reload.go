package config

import "reflect"

// RestartSections names the sections (their YAML keys, sorted) in which
// next differs from cur and that take effect only at a restart: every
// top-level section but subscriptions, which a reload applies. A reload
// reports them and keeps running with cur's. Sections of plain values
// compare with ==, so a slice or map added to one fails to compile here
// rather than going unnoticed; the others compare with reflect.DeepEqual.
func RestartSections(cur, next *Config) []string {
	var changed []string
	for _, s := range []struct {
		name string
		same bool
	}{
		{"admin", cur.Admin == next.Admin},
		{"custom_events", reflect.DeepEqual(cur.CustomEvents, next.CustomEvents)},
		{"delivery", reflect.DeepEqual(cur.Delivery, next.Delivery)},
		{"journal", cur.Journal == next.Journal},
		{"log", cur.Log == next.Log},
		{"mapping", reflect.DeepEqual(cur.Mapping, next.Mapping)},
		{"notify", cur.Notify == next.Notify},
		{"outbox", cur.Outbox == next.Outbox},
		{"secrets", reflect.DeepEqual(cur.Secrets, next.Secrets)},
		{"sla", reflect.DeepEqual(cur.SLA, next.SLA)},
		{"source", cur.Source == next.Source},
		{"telemetry", cur.Telemetry == next.Telemetry},
	} {
		if !s.same {
			changed = append(changed, s.name)
		}
	}
	return changed
}
