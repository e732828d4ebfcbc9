-- dzhook journal, version 6: ordered delivery.
--
-- A subscription with ordering (entity or subscription) gives each of its
-- deliveries a key (the request's or user's id; '' for the whole
-- subscription) and a position (the stream order: commit LSN, then the id;
-- an SLA event the moment it fired). The next delivery of a key is claimed
-- only once every earlier one of that key is finished (delivered, failed
-- or skipped): see Store.Claim. NULL key: unordered, as before.
-- Nullable columns without defaults: adding them rewrites nothing.
ALTER TABLE {{schema}}.deliveries ADD COLUMN ordering_key text COLLATE "C";
ALTER TABLE {{schema}}.deliveries ADD COLUMN position bigint;
-- The unfinished deliveries of each key, in order: the claim asks it
-- whether a delivery is its key's head; few rows (pending and held only).
CREATE INDEX deliveries_order ON {{schema}}.deliveries (subscription_id, ordering_key, position, id)
    WHERE ordering_key IS NOT NULL AND state IN ('pending', 'held');
