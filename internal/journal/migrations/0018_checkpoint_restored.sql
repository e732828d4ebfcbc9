-- dzhook journal, version 18: a checkpoint remembers a restore seen.
--
-- A server of the checkpoint's cluster and timeline whose WAL ends before
-- the checkpoint (a restore from a snapshot) is refused by the process
-- that sees it. Its WAL end is kept here, so that a later start drops a
-- checkpoint past it even once the restored server's WAL has passed the
-- checkpoint: trusted then, the restored server's transactions below it
-- were skipped as journaled. NULL: no restore seen.
ALTER TABLE {{schema}}.checkpoints ADD COLUMN restored_below bigint;
