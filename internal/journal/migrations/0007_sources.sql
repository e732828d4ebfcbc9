-- dzhook journal, version 7: which replication slot feeds the journal, and
-- the gaps an operator accepted.
--
-- One source database (a cluster's system identifier and a database
-- name) feeds a journal through one slot: a second slot on the same
-- source would journal and deliver every event a second time. A slot that
-- starts past the journal's checkpoint (dropped and created again, or
-- advanced by hand) means transactions in between were never read: a
-- gap, refused until an operator accepts it (`dzhook setup
-- --accept-gap`), and kept here as the record of what was skipped.
CREATE TABLE {{schema}}.sources (
    system_id      text NOT NULL,
    database       text NOT NULL,
    slot           text NOT NULL,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (system_id, database)
);

CREATE TABLE {{schema}}.gaps (
    id           bigserial PRIMARY KEY,
    slot         text NOT NULL,
    system_id    text NOT NULL,
    from_lsn     bigint NOT NULL,   -- the journal's checkpoint
    to_lsn       bigint NOT NULL,   -- where the slot starts
    detected_at  timestamptz NOT NULL DEFAULT now(),
    accepted_at  timestamptz,
    accepted_by  text,
    UNIQUE (slot, system_id, from_lsn, to_lsn)
);

-- The highest position reported to PostgreSQL as flushed is at most a
-- checkpoint's end_lsn: the end of the last commit record acknowledged,
-- or a position the stream was idle at. A slot past it started elsewhere.
ALTER TABLE {{schema}}.checkpoints ADD COLUMN end_lsn bigint;
