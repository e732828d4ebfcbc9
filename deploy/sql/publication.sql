-- What only the owner of DZDESK's tables (or a superuser) can do for
-- dzhook: the publication, REPLICA IDENTITY FULL and the replication slot.
-- Run it once, after role.sql, in the DZDESK database:
--
--   psql -d dzdesk -f deploy/sql/publication.sql
--
-- and run dzhook with source.auto_setup: false; `dzhook setup --check`
-- then confirms that everything is in place. It is idempotent. The names
-- are dzhook's defaults (source.publication, source.slot).
--
-- Create the slot shortly before dzhook's first start: from then on
-- PostgreSQL keeps the WAL that dzhook has not confirmed (see
-- max_slot_wal_keep_size in deploy/README.md). Creating it waits for the
-- transactions running at that moment to finish.

\set ON_ERROR_STOP on

-- The publication lists the mapped tables, and the outbox when it exists.
-- CREATE PUBLICATION needs CREATE on the database and ownership of every
-- table.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'dzhook') THEN
    CREATE PUBLICATION dzhook FOR TABLE public.users, public.requests, public.comments, public.request_slas;
  END IF;
  IF to_regclass('public.dzhook_outbox') IS NOT NULL
     AND NOT EXISTS (SELECT FROM pg_publication_tables
                      WHERE pubname = 'dzhook' AND schemaname = 'public' AND tablename = 'dzhook_outbox') THEN
    ALTER PUBLICATION dzhook ADD TABLE public.dzhook_outbox;
  END IF;
END $$;

-- Updates and deletes stream the whole old row: previous status, previous
-- assignee, the active flag, the previous SLA target. A catalog change,
-- but it takes an ACCESS EXCLUSIVE lock for a moment.
ALTER TABLE public.users REPLICA IDENTITY FULL;
ALTER TABLE public.requests REPLICA IDENTITY FULL;
ALTER TABLE public.request_slas REPLICA IDENTITY FULL;

-- After the publication: pgoutput reads the publication as of each
-- change, so a slot older than its publication fails on the changes in
-- between. In the target list, so that it runs only when the slot is
-- missing, and only when the owner may replicate: an owner without the
-- REPLICATION attribute (CloudNativePG's app owner) leaves the slot to
-- the dzhook role (`dzhook setup`), and is told so.
SELECT pg_create_logical_replication_slot('dzhook', 'pgoutput')
 WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = 'dzhook')
   AND (SELECT rolreplication OR rolsuper
               OR (EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_replication') AND pg_has_role(current_user, 'rds_replication', 'member'))
          FROM pg_roles WHERE rolname = current_user);
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = 'dzhook') THEN
    RAISE NOTICE 'slot dzhook not made: % may not replicate; the dzhook role makes it: dzhook setup --config config.yaml', current_user;
  END IF;
END $$;
