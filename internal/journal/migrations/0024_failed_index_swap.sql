-- dzhook journal, version 24: deliveries_failed without test sends.
--
-- Version 23 built the index that leaves test sends out beside the old
-- one; this drops the old one and gives the new one its name. A DROP
-- INDEX locks the deliveries table against reads and writes, for a
-- moment: alone here, nothing is built under that lock, and nothing else
-- is held while it waits (its wait is a lock_timeout's try, retried).
DROP INDEX {{schema}}.deliveries_failed;
ALTER INDEX {{schema}}.deliveries_failed_kept RENAME TO deliveries_failed;
