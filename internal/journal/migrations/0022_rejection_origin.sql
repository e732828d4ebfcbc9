-- dzhook journal, version 22: a rejection recorded once.
--
-- A transaction is streamed again after a crash before its commit was
-- checkpointed (or by a process that takes the slot over): its events and
-- deliveries are found by their ids, which are their positions, but each
-- of its rejections was inserted again, one bad outbox row or message
-- listed once per crash (found by a review). A rejection now records its
-- change's ordinal within its transaction: with commit_lsn, its position.
-- The writer inserts it ON CONFLICT DO NOTHING.
--
-- Rows recorded before have no ordinal and are left out of the index:
-- duplicates a crash left before the upgrade stay as they are (retention
-- removes them) and do not fail the migration.
ALTER TABLE {{schema}}.rejections ADD COLUMN ordinal bigint;

CREATE UNIQUE INDEX rejections_origin ON {{schema}}.rejections (commit_lsn, ordinal) WHERE ordinal IS NOT NULL;
