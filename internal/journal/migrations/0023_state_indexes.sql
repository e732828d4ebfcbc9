-- dzhook journal, version 23: the history of the failed, skipped and
-- cancelled deliveries, and the failed ones counted from their index.
--
-- The history filtered by status skipped or cancelled across every
-- subscription (GET /v1/deliveries?status=cancelled, the dashboard's
-- status filter) found its few rows by reading each subscription's whole
-- history (the retention period's) through deliveries_sub_history: no
-- index held them. This one gives each subscription's deliveries of
-- those states newest first, as the history lists them. They are few,
-- and a delivery enters it once, when it ends so (or is written
-- skipped); the delivered ones, the many, stay out, and so does the
-- stream's insert of a pending delivery: it costs the writes little.
-- It serves status=failed too, which deliveries_failed no longer can
-- (below).
CREATE INDEX deliveries_state_history ON {{schema}}.deliveries (subscription_id, state, created_at DESC, id DESC)
    WHERE state IN ('failed', 'skipped', 'cancelled');

-- The backlog counts (GET /v1/subscriptions, which the dashboard polls,
-- and every metrics refresh) count the failed deliveries kept, leaving
-- out an operator's test sends: with "NOT test" outside the index's
-- predicate, each of them was a visit to its row in the table. With it
-- inside, the count is read from the index alone. RetryFailed, its one
-- other reader, asks for the same rows (state = 'failed' AND NOT test).
--
-- It is built here beside the old one, under the name it takes in
-- version 24, which drops the old one: a DROP INDEX locks the table
-- against reads too, and taken here after the builds (a lock upgrade) it
-- deadlocked with an older process's transaction that read the table
-- and then wrote it (a replay step), or timed out and threw both builds
-- away, and once granted it held every read of deliveries for the
-- second build (found by a review). Alone in its own migration it is
-- brief, and its wait is a lock_timeout's try.
--
-- Both builds read the deliveries table once, and writes to it wait
-- meanwhile, reads not (a SHARE lock; a migration runs in a transaction,
-- which CREATE INDEX CONCURRENTLY cannot).
CREATE INDEX deliveries_failed_kept ON {{schema}}.deliveries (subscription_id, created_at)
    WHERE state = 'failed' AND NOT test;
