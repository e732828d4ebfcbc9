-- dzhook journal, version 23: the history of the failed, skipped and
-- cancelled deliveries.
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
-- Its build reads the deliveries table once, and writes to it wait
-- meanwhile (a migration runs in a transaction, which CREATE INDEX
-- CONCURRENTLY cannot).
CREATE INDEX deliveries_state_history ON {{schema}}.deliveries (subscription_id, state, created_at DESC, id DESC)
    WHERE state IN ('failed', 'skipped', 'cancelled');

