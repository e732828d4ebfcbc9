-- dzhook journal, version 10: an attempt names the instance that made it.
--
-- Several processes share the journal, and any of them may make any
-- attempt of a delivery, so the history says which one did: the id of
-- the instance (the instances table's id, hostname-pid-random). Not a
-- foreign key: an instance's row goes when it stops, its attempts stay.
-- NULL: made before this version (unknown). A nullable column without a
-- default: adding it rewrites nothing.
ALTER TABLE {{schema}}.attempts ADD COLUMN instance text;
