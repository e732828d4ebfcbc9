-- dzhook journal, version 17: a checkpoint names its timeline.
--
-- A checkpoint is a position in one timeline of its cluster's WAL. After
-- a failover to a standby that was behind, the promoted server's timeline
-- leaves the old one below the checkpoint, and its transactions between
-- the fork and the checkpoint would be taken for ones already journaled
-- and skipped. The timeline the position was read on lets a start find
-- the fork (TIMELINE_HISTORY) and refuse. NULL: unknown (written before
-- this version), judged as before.
ALTER TABLE {{schema}}.checkpoints ADD COLUMN timeline integer;
