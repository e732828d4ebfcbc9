// Package fanout delivers events to subscriptions: it matches each event
// against the subscriptions and their CEL filters, makes the first attempt
// straight from memory, signs every POST (signer), decides what follows
// each attempt (Next: the retry schedule, 4xx, 410, Retry-After), keeps
// each subscription's health (healthy, failing, disabled) and tells the
// admin when it changes, claims due work from the journal, and keeps the
// order of an ordered subscription's deliveries per key.
//
// fanout writes nothing itself: every delivery, attempt and state change
// is a journal.Record put to the journal writer (Recorder), in order, and
// the writer decides when the replication slot may move. What fanout
// reads and claims goes through Store.
//
// Its parts, in the order an event meets them (Dispatcher's comment has
// the detail):
//
//	route.go     Dispatch: match, filter, admit (ordering), rows → journal writer, first attempt → queue
//	deliver.go   per subscription: workers, attempts, health
//	policy.go    Next: what follows an attempt (pure, table-tested)
//	order.go     per-key state of ordered subscriptions (the design is explained there)
//	schedule.go  claims of due work, lost claims, heartbeat
//	notify.go    Notifier: notify.url, from the journal
//	ops.go       operators: retry now, retry failed, test, pause, resume, status
//	http.go      the HTTP client of one subscription, error classes
//	egress.go    which addresses deliveries may reach
package fanout
