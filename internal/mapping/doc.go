// Package mapping turns committed row changes (cdc.Change) into the
// events of DZDESK's catalog: for each change, the events it fires, in
// the order they fire, each serialized once as the envelope every attempt
// sends, {"id","event","timestamp","data"}. It reads no stream and writes
// no journal; the engine calls Mapper.Map from the stream's goroutine.
//
// # From tables to events
//
// Each change is routed by its table to an entity:
//
//   - requests: an insert fires request.created; an update fires
//     request.updated when a mapped column changed, and also
//     request.status_changed (previous and new status, who changed it)
//     and request.assigned (previous assignee) when those columns did; a
//     delete fires request.deleted, with the whole request when the table
//     has REPLICA IDENTITY FULL, else with its id only.
//   - users: an insert fires user.created; an update fires user.updated,
//     and user.deactivated when active went from true to false.
//   - comments: an insert fires request.commented.
//   - the SLA table fires nothing itself. SLAChange says which timers a
//     change arms or cancels, and SLAEvent builds the sla.warning or
//     sla.breach a timer fires; the clock that keeps the timers runs in
//     the engine.
//   - the outbox table and logical messages fire custom events (below).
//
// Events that compare old and new values need the old row, which
// PostgreSQL sends only under REPLICA IDENTITY FULL (FullIdentityTables
// lists those tables, and `dzhook setup` sets it). Without it an update of
// a request fires request.updated alone, and the mapper warns once.
// Changes of other tables, and updates of unmapped columns only, fire
// nothing.
//
// # Event ids from stream positions
//
// An event's id is where it came from, encoded (Source.NewID): 3 bytes of
// the source database, 8 of the transaction's commit LSN, 4 of the
// change's ordinal in the transaction, 1 of the event's index among the
// events of that change, in a base32 whose alphabet is in ASCII order. A
// replay of the stream (after a restart, the slot resends what was not
// acknowledged) gives every event the same id again, so the journal
// recognises it; ids of one database sort in stream order; and the hot
// path hashes nothing. The Source comes from the database's system
// identifier (NewSource), so two databases never share ids. SLA events
// come from time, not from a change: their ids hash the SLA row, the
// kind and the target time (Source.NewTimedID). An event's timestamp is
// its transaction's commit time (an SLA event's: when its threshold was
// crossed).
//
// # The reference mapping and YAML mappings
//
// Config says which tables and columns hold requests, users, comments and
// SLAs, the id prefixes of payloads (req_, usr_, …) and translations of
// stored values (status "1" → "open"). Its defaults are the reference
// schema of deploy/sql, so an empty `mapping:` section works with it;
// another schema is described in YAML, without code. A column set to ""
// is not mapped: its field is left out of payloads, or the event that
// needs it does not fire. Config.Check compares the mapping with the live
// catalog at start, and Tables lists what the publication must include.
//
// # Outbox rows and logical messages
//
// Applications can fire events of their own, declared under
// custom_events in the configuration. An insert into the outbox table
// (columns event and payload) fires the event it names with the payload
// as data; updates and deletes of the outbox are ignored, so the
// application may delete the row in the same transaction. A logical
// decoding message (pg_logical_emit_message) whose prefix is the
// configured one ("dzdesk" by default) carries {"event": "…", "data":
// {…}}. Either must be valid UTF-8, at most 1 MiB, a JSON object, name
// a declared event, and keep to the schema of its data when the
// declaration gives one (MapperConfig.Schemas). One that is not becomes a
// Rejection instead of events: the engine records it and the stream goes
// on.
//
// # People
//
// Payloads show people as {"id": "usr_…", "email": …}: a request's
// requester and assignee, a comment's author, whoever made a change. The
// emails come from a bounded LRU cache (CacheSize users) that the users
// stream keeps fresh; ids it lacks are looked up in one batched query per
// change (UserLookup, PoolUsers), bounded by LookupTimeout. A user the
// lookup does not know gets a null email, remembered; a lookup that fails
// is logged and gives null emails, not remembered, so a later event tries
// again. A lookup never fails a change or stalls the stream.
//
// Sample builds the envelopes of test deliveries, in the same shapes with
// sample values.
package mapping
