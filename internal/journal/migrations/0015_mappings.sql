-- dzhook journal, version 15: the mappings a slot's changes were mapped with.
--
-- A restart with a mapping written for a migrated schema (status: state
-- after RENAME COLUMN status TO state) streams again the changes after
-- the checkpoint, and those committed before the ALTER still carry the
-- old columns: the new mapping does not fit them, and the mapping that
-- did was gone with the process. The last few mappings each slot ran
-- with are kept here (the newest first by id), so a start maps such
-- changes with the one that fits them, until the new one fits the table.
CREATE TABLE {{schema}}.mappings (
    slot        text        NOT NULL,
    id          bigserial,
    config      jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, id)
);
