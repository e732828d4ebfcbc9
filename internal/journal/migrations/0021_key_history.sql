-- dzhook journal, version 21: the history of one ordering key.
--
-- An operator looking for what holds a key back lists its deliveries
-- (GET /v1/deliveries?ordering_key=K, dzhook deliveries --ordering-key K),
-- finished ones too. deliveries_order holds only the unfinished ones, and
-- through deliveries_sub_history the list read a subscription's whole
-- history (the retention period's) to find a key's few rows. This index
-- gives each subscription's key its rows newest first, as the history
-- lists them; it holds ordered deliveries only. Its build reads the
-- deliveries table once, and writes to it wait meanwhile (a migration
-- runs in a transaction, which CREATE INDEX CONCURRENTLY cannot).
CREATE INDEX deliveries_key_history ON {{schema}}.deliveries (subscription_id, ordering_key, created_at DESC, id DESC)
    WHERE ordering_key IS NOT NULL;
