// Package journal is dzhook's durable store, in PostgreSQL: events (the
// exact bytes sent), deliveries (one per event and subscription, with
// state and the time of the next attempt), attempts (what each receiver
// answered), subscription state, checkpoints of the replication stream,
// running instances, and rejected outbox rows.
//
// Writes come in batches (Store.Write: one transaction, one round trip),
// never one per delivery: one statement per kind of row over arrays
// (unnest), prepared once per connection; the arrays of events,
// deliveries and attempts, a row each per event, are encoded by the
// batch itself in PostgreSQL's binary format (arrays.go). Due work is claimed with FOR UPDATE SKIP LOCKED
// so several dzhook processes share it; a delivery being attempted has an
// owner, and only when that owner's heartbeat goes stale may another
// process take it over. Each claim marks its rows with a token, so an
// owner whose claim failed after committing (the answer lost with the
// connection) can give back exactly those rows (Store.ReleaseLost), again
// until the server process that ran the claim is done with it.
//
// Delivery states:
//
//	pending ──2xx──────────────────▶ delivered
//	   │  └─4xx, or last attempt──▶ failed ──manual retry──▶ pending
//	   └─5xx/timeout: next_attempt_at += schedule
//	held (inactive subscription, queue_while_inactive) ──resume──▶ pending
//	skipped (inactive subscription without queueing)
//
// History does not grow for ever: Retention, which every process may run,
// deletes finished deliveries created and last attempted more than
// journal.retention ago in short batches, with their attempts and events.
//
// The schema is created and upgraded by embedded, versioned migrations
// (Store.Migrate), applied by `dzhook setup` and `dzhook run`.
package journal
