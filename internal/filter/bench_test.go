package filter

import "testing"

// BenchmarkParse is the per-event cost of reading an envelope for the
// filters of the subscriptions that have one (once per event).
func BenchmarkParse(b *testing.B) {
	body := []byte(`{"id":"whk_2uclu222222257gue222222222","event":"request.updated","timestamp":"2024-01-15T14:30:00Z","data":{"id":"req_123","title":"Cannot access email","status":"in_progress","priority":"high","requester":{"id":"usr_456","email":"jane@company.com"},"assignedTo":null,"createdAt":"2024-01-15T14:00:00Z","updatedAt":"2024-01-15T14:30:00Z","count":3}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(body); err != nil {
			b.Fatal(err)
		}
	}
}
