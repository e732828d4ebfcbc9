-- dzhook journal, version 3: a checkpoint names its database cluster.
--
-- A checkpoint is a position in one cluster's WAL. Pointed at another
-- cluster (a rebuilt server, a fresh replica promoted), or at the same one
-- restored from a backup, the old position would make dzhook skip every
-- transaction below it. The system identifier lets dzhook tell, and a
-- checkpoint of another cluster is replaced rather than kept as a maximum.
ALTER TABLE {{schema}}.checkpoints ADD COLUMN system_id text;
